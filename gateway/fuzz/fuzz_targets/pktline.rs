//! The receive-pack command parser and the refusal answer: any bytes, no panic; what parses
//! names only well-formed updates; a refusal answer parses back as pkt-lines.
#![no_main]

use airlock_egress_checks::git::{parse_push, pkt_line, refused_answer, refusal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(push) = parse_push(data) else {
        return;
    };
    assert!(push.consumed <= data.len());
    let reasons: Vec<(String, String)> = push
        .commands
        .iter()
        .filter_map(|c| refusal(c, Some("airlock/x")).map(|w| (c.refname.clone(), w)))
        .collect();
    for c in &push.commands {
        assert!(c.old.len() == 40 || c.old.len() == 64);
        if refusal(c, Some("airlock/x")).is_none() {
            assert_eq!(c.refname, "refs/heads/airlock/x");
            assert!(!c.is_delete());
        }
    }
    let answer = refused_answer(&push, &reasons);
    let mut at = 0;
    loop {
        let (line, n) = pkt_line(&answer[at..]).expect("the answer is pkt-lines");
        at += n;
        if line.is_none() {
            break;
        }
    }
    assert_eq!(at, answer.len());
});
