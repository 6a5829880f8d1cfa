//! The command parser: any comment or chat text, no panic; a mention inside code or a quote
//! never counts; what parses as a run has a prompt.
#![no_main]

use airlock_command::{from_comment, parse, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Command::Run { prompt, .. }) = parse(text) {
        assert!(!prompt.trim().is_empty());
    }
    let _ = from_comment(text, "airlock");
    // Quoted or fenced, the same text starts nothing.
    let quoted: String = text.lines().map(|l| format!("> {l}\n")).collect();
    assert!(from_comment(&quoted, "airlock").is_none(), "{quoted:?}");
    if !text.contains("```") && !text.contains("~~~") {
        let fenced = format!("```\n{text}\n```\n");
        assert!(from_comment(&fenced, "airlock").is_none(), "{fenced:?}");
    }
});
