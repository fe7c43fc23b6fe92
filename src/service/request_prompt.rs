//! A request's prompt ids: its task or text rendered through the model's chat template with
//! the family's template variables, then tokenised with each image's placeholders expanded.
//!
//! ERNIE-4.5-VL's template reads `enable_thinking`: on unless the request turns it off
//! (`chat_template_kwargs`), as FastDeploy renders it (docs/ERNIE_4_5_VL_SPEC.md §6.3; the
//! current transformers template defaults to off). PaddleOCR-VL's template gets the variable
//! only when a request gives it (its template ignores it). The PaddleOCR-VL task prompts are
//! that model's; another family refuses them.

use serde_json::{Map, Value};

use super::{Frontend, OcrRequest, PromptInput};
use crate::config::ModelFamilyKind;
use crate::error::{Error, Result};
use crate::preprocess::image::ImageGrid;
use crate::preprocess::Prompt;

impl Frontend {
    pub(super) fn build_prompt(&self, req: &OcrRequest, grids: &[ImageGrid]) -> Result<Prompt> {
        let mut vars = Map::new();
        let thinking = match self.family {
            ModelFamilyKind::ErnieVl => Some(req.enable_thinking.unwrap_or(true)),
            ModelFamilyKind::PaddleOcrVl => req.enable_thinking,
        };
        if let Some(on) = thinking {
            vars.insert("enable_thinking".into(), Value::Bool(on));
        }
        let text = match (&req.prompt, self.family) {
            (PromptInput::Text(text), _) => text.as_str(),
            (PromptInput::Task(task), ModelFamilyKind::PaddleOcrVl) => task.prompt(),
            (PromptInput::Task(task), ModelFamilyKind::ErnieVl) => {
                return Err(Error::invalid(
                    "submit",
                    format!(
                        "the task `{}` is a PaddleOCR-VL prompt; the served ERNIE-4.5-VL model takes the \
                         request's text",
                        task.name()
                    ),
                ))
            }
        };
        Ok(self.prompts.build_with(grids, text, &vars)?)
    }
}
