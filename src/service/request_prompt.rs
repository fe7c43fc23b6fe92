//! A request's prompt ids: its task, text or conversation rendered through the model's chat
//! template with the family's template variables, then tokenised with each image's
//! placeholders expanded.
//!
//! ERNIE-4.5-VL's template reads `enable_thinking`: on unless the request turns it off
//! (`chat_template_kwargs`), as FastDeploy renders it (docs/ERNIE_4_5_VL_SPEC.md §6.3; the
//! current transformers template defaults to off). PaddleOCR-VL's template gets the variable
//! only when a request gives it (its template ignores it). The PaddleOCR-VL task prompts are
//! that model's; conversations (system and assistant turns) are ERNIE-4.5-VL's, whose template
//! has them: each family refuses the other's.

use serde_json::{json, Map, Value};

use super::{ChatPart, ChatRole, ChatTurn, Frontend, OcrRequest, PromptInput};
use crate::config::ModelFamilyKind;
use crate::error::{Error, Result};
use crate::preprocess::image::ImageGrid;
use crate::preprocess::Prompt;

impl Frontend {
    /// Refuses a prompt of the other family's kind (a PaddleOCR-VL task for ERNIE-4.5-VL, a
    /// conversation for PaddleOCR-VL): checked before any image is decoded.
    pub(super) fn check_prompt_kind(&self, prompt: &PromptInput) -> Result<()> {
        match (prompt, self.family) {
            (PromptInput::Task(task), ModelFamilyKind::ErnieVl) => Err(Error::invalid(
                "submit",
                format!(
                    "the task `{}` is a PaddleOCR-VL prompt; the served ERNIE-4.5-VL model takes the \
                     request's text",
                    task.name()
                ),
            )),
            (PromptInput::Chat(_), ModelFamilyKind::PaddleOcrVl) => Err(Error::invalid(
                "submit",
                "PaddleOCR-VL is a single-turn model: one user message, no system or assistant turns",
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn build_prompt(&self, req: &OcrRequest, grids: &[ImageGrid]) -> Result<Prompt> {
        self.check_prompt_kind(&req.prompt)?;
        let mut vars = Map::new();
        let thinking = match self.family {
            ModelFamilyKind::ErnieVl => Some(req.enable_thinking.unwrap_or(true)),
            ModelFamilyKind::PaddleOcrVl => req.enable_thinking,
        };
        if let Some(on) = thinking {
            vars.insert("enable_thinking".into(), Value::Bool(on));
        }
        let text = match &req.prompt {
            PromptInput::Text(text) => text.as_str(),
            PromptInput::Task(task) => task.prompt(),
            PromptInput::Chat(turns) => {
                let images = turns
                    .iter()
                    .flat_map(|t| &t.parts)
                    .filter(|p| **p == ChatPart::Image)
                    .count();
                if images != grids.len() {
                    return Err(Error::invalid(
                        "submit",
                        format!("the conversation has {images} image parts for {} images", grids.len()),
                    ));
                }
                return Ok(self.prompts.build_messages(grids, messages_json(turns), &vars)?);
            }
        };
        Ok(self.prompts.build_with(grids, text, &vars)?)
    }
}

/// The conversation as chat templates take it: user content as typed parts (images where they
/// appear), system and assistant content as one string, an assistant's thinking as
/// `reasoning_content`.
fn messages_json(turns: &[ChatTurn]) -> Value {
    let text_of = |parts: &[ChatPart]| -> String {
        parts
            .iter()
            .filter_map(|p| match p {
                ChatPart::Text(t) => Some(t.as_str()),
                ChatPart::Image => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Value::Array(
        turns
            .iter()
            .map(|t| {
                let content = match t.role {
                    ChatRole::User => Value::Array(
                        t.parts
                            .iter()
                            .map(|p| match p {
                                ChatPart::Text(text) => json!({"type": "text", "text": text}),
                                ChatPart::Image => json!({"type": "image"}),
                            })
                            .collect(),
                    ),
                    ChatRole::System | ChatRole::Assistant => Value::String(text_of(&t.parts)),
                };
                let mut m = json!({"role": t.role.name(), "content": content});
                if let Some(r) = &t.reasoning {
                    m["reasoning_content"] = Value::String(r.clone());
                }
                m
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_become_template_messages() {
        let turns = vec![
            ChatTurn {
                role: ChatRole::System,
                parts: vec![ChatPart::Text("Be brief.".into())],
                reasoning: None,
            },
            ChatTurn {
                role: ChatRole::User,
                parts: vec![ChatPart::Text("Compare".into()), ChatPart::Image, ChatPart::Image],
                reasoning: None,
            },
            ChatTurn {
                role: ChatRole::Assistant,
                parts: vec![ChatPart::Text("The first.".into())],
                reasoning: Some("Looking.".into()),
            },
            ChatTurn {
                role: ChatRole::User,
                parts: vec![ChatPart::Text("Why?".into())],
                reasoning: None,
            },
        ];
        let want = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Compare"}, {"type": "image"}, {"type": "image"}]},
            {"role": "assistant", "content": "The first.", "reasoning_content": "Looking."},
            {"role": "user", "content": [{"type": "text", "text": "Why?"}]},
        ]);
        assert_eq!(messages_json(&turns), want);
    }
}
