//! The documented deployment command lines (tests/fixtures/command_lines.txt, verbatim from
//! vLLM, vLLM-Ascend, FastDeploy, PaddleX's genai_server and GPUStack) parsed by `serve`'s
//! parser: those that should start give the expected settings, those asking for what ocrvl
//! cannot do fail naming the flag.

use std::collections::HashMap;

use ocrvl::server::cli::ServeArgs;
use ocrvl::service::reasoning::ReasoningParser;

const FIXTURE: &str = include_str!("../fixtures/command_lines.txt");

struct Entry {
    source: String,
    expect: Vec<String>,
    argv: Vec<String>,
}

/// Splits a command line the way a POSIX shell does for these commands: whitespace, single
/// and double quotes, `${NAME}` / `$NAME` from `vars`.
fn shell_words(line: &str, vars: &HashMap<String, String>) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (_, '$') if quote != Some('\'') => {
                let braced = chars.peek() == Some(&'{');
                if braced {
                    chars.next();
                }
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if braced {
                    assert_eq!(chars.next(), Some('}'), "unclosed ${{ in {line}");
                }
                cur.push_str(vars.get(&name).unwrap_or_else(|| panic!("${name} is not set")));
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (_, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unclosed quote in {line}");
    if in_word {
        words.push(cur);
    }
    words
}

/// Drops the program part: `vllm serve`, `python -m MODULE`.
fn strip_program(words: Vec<String>) -> Vec<String> {
    match words.first().map(String::as_str) {
        Some("vllm") => {
            assert_eq!(words[1], "serve");
            words[2..].to_vec()
        }
        Some("python") | Some("python3") => {
            assert_eq!(words[1], "-m");
            words[3..].to_vec()
        }
        other => panic!("unknown program {other:?}"),
    }
}

fn entries() -> Vec<Entry> {
    let mut out = Vec::new();
    for block in FIXTURE.split("\n\n") {
        let mut source = String::new();
        let mut expect = Vec::new();
        let mut vars = HashMap::new();
        let mut command = String::new();
        for line in block.lines() {
            if let Some(s) = line.strip_prefix("# source: ") {
                source = s.to_string();
            } else if let Some(e) = line.strip_prefix("# expect: ") {
                expect = e.split_whitespace().map(String::from).collect();
            } else if line.starts_with('#') || line.trim().is_empty() {
            } else if let Some(export) = line.strip_prefix("export ") {
                let (k, v) = export.split_once('=').expect("export NAME=value");
                let v = shell_words(v, &vars).join(" ");
                vars.insert(k.to_string(), v);
            } else {
                match line.strip_suffix('\\') {
                    Some(part) => command.push_str(part),
                    None => command.push_str(line),
                }
                command.push(' ');
            }
        }
        if command.trim().is_empty() {
            continue;
        }
        assert!(!source.is_empty(), "an entry without a source: {command}");
        assert!(!expect.is_empty(), "an entry without an expectation: {command}");
        out.push(Entry {
            source,
            expect,
            argv: strip_program(shell_words(&command, &vars)),
        });
    }
    out
}

/// Checks one `key=value` expectation against the parsed settings.
fn check(args: &ServeArgs, key: &str, want: &str, ctx: &str) {
    let e = &args.engine;
    let got = match key {
        "model" => e.model.as_ref().map(|m| m.display().to_string()).unwrap_or_default(),
        "port" => args.port.to_string(),
        "metrics_port" => args.metrics_port.map(|p| p.to_string()).unwrap_or_default(),
        "max_model_len" => e.max_model_len.to_string(),
        "max_num_seqs" => e.max_num_seqs.to_string(),
        "max_num_batched_tokens" => e.max_num_batched_tokens.to_string(),
        "gpu_memory_utilization" => e.gpu_memory_utilization.to_string(),
        "prefix_caching" => e.enable_prefix_caching.to_string(),
        "enforce_eager" => e.enforce_eager.to_string(),
        "image_cache_bytes" => args.image_cache_bytes.to_string(),
        "chat_template" => args
            .chat_template
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        "names" => args.server.served_model_names.join(","),
        "note" => {
            assert!(
                args.notes
                    .iter()
                    .any(|n| n.starts_with(want) && n.contains("no effect")),
                "{ctx}: no no-effect line for {want}: {:?}",
                args.notes
            );
            return;
        }
        other => panic!("{ctx}: unknown expectation key {other}"),
    };
    assert_eq!(got, want, "{ctx}: {key}");
}

#[test]
fn every_documented_command_line_parses_as_expected() {
    let entries = entries();
    assert!(entries.len() >= 9, "{} entries", entries.len());
    let (mut started, mut refused) = (0, 0);
    for entry in &entries {
        let ctx = format!("{} ({})", entry.argv.join(" "), entry.source);
        match entry.expect[0].as_str() {
            "start" => {
                let args = ServeArgs::parse(&entry.argv).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                for kv in &entry.expect[1..] {
                    let (k, v) = kv.split_once('=').expect("key=value");
                    check(&args, k, v, &ctx);
                }
                // Every accepted flag that does nothing says so, one line each.
                let mut seen = std::collections::HashSet::new();
                for n in &args.notes {
                    assert!(seen.insert(n), "{ctx}: note twice: {n}");
                }
                started += 1;
            }
            "error" => {
                let flag = &entry.expect[1];
                let e = ServeArgs::parse(&entry.argv).expect_err(&ctx).to_string();
                assert!(e.contains(flag.as_str()), "{ctx}: the error does not name {flag}: {e}");
                refused += 1;
            }
            other => panic!("{ctx}: unknown expectation {other}"),
        }
    }
    assert!(started >= 8 && refused >= 1, "{started} started, {refused} refused");
}

#[test]
fn what_ocrvl_cannot_do_is_refused_naming_the_flag() {
    // Variants of the vLLM recipe's command asking for what ocrvl does not do.
    let base = "PaddlePaddle/PaddleOCR-VL --trust-remote-code --max-num-batched-tokens 16384";
    for (extra, flag, why) in [
        ("--tensor-parallel-size 2", "--tensor-parallel-size", "one GPU"),
        ("--pipeline-parallel-size 2", "--pipeline-parallel-size", "one GPU"),
        ("--quantization fp8", "--quantization", "unquantized"),
        ("--dtype float16", "--dtype", "bfloat16 only"),
        ("--dtype=half", "--dtype", "bfloat16 only"),
        (
            r#"--limit-mm-per-prompt {"image":1,"video":1}"#,
            "--limit-mm-per-prompt",
            "images only",
        ),
        (
            "--limit-mm-per-prompt image=1,video=2",
            "--limit-mm-per-prompt",
            "images only",
        ),
        ("--enable-lora", "--enable-lora", "unexpected argument"),
        ("--reasoning-parser qwen3", "--reasoning-parser", "unknown parser"),
    ] {
        let argv: Vec<String> = format!("{base} {extra}").split_whitespace().map(String::from).collect();
        let e = ServeArgs::parse(&argv).expect_err(extra).to_string();
        assert!(e.contains(flag) && e.contains(why), "{extra}: {e}");
    }
    // The ERNIE parsers are taken by their FastDeploy and vLLM names.
    for (name, parser) in [
        ("ernie-45-vl", ReasoningParser::Ernie45Vl),
        ("ernie45", ReasoningParser::Ernie45Vl),
        ("ernie-45-vl-thinking", ReasoningParser::Ernie45VlThinking),
    ] {
        let argv: Vec<String> = format!("{base} --reasoning-parser {name}")
            .split_whitespace()
            .map(String::from)
            .collect();
        let args = ServeArgs::parse(&argv).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(args.server.reasoning_parser, Some(parser), "{name}");
    }
    // Their harmless counterparts start.
    for ok in [
        "--tensor-parallel-size 1",
        "--dtype bfloat16",
        r#"--limit-mm-per-prompt {"image":1,"video":0}"#,
    ] {
        let argv: Vec<String> = format!("{base} {ok}").split_whitespace().map(String::from).collect();
        ServeArgs::parse(&argv).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}
