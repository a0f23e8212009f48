//! Helpers shared by the CLI tests that train: run the `q2` binary on two threads and check its
//! exit status and stderr.

#![allow(dead_code)]

use std::process::{Command, Output};

pub fn q2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_q2")).args(["--threads", "2"]).args(args).output().unwrap()
}

/// The stdout of a successful run (panics with its stderr otherwise).
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "stderr: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Exit status 2 (bad input) with `needle` in the message.
pub fn status2(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
}
