//! `tether completions` and `tether man`: generated from the clap
//! definition, so they know every subcommand and flag.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tether");

fn tether(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "tether {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_for_every_shell_know_the_subcommands_and_flags() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = tether(&["completions", shell]);
        assert!(script.contains("serve") && script.contains("connect"), "{shell}: {script}");
        assert!(script.contains("listen"), "{shell}: no --listen");
        assert!(script.contains("max-message-size"), "{shell}: no --max-message-size");
    }
    let out = Command::new(BIN).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_pages_to_stdout_and_to_a_directory() {
    let page = tether(&["man"]);
    assert!(page.starts_with(".ie") || page.contains(".TH tether 1"), "{page}");
    assert!(page.contains("serve") && page.contains("connect"), "{page}");
    let serve = tether(&["man", "serve"]);
    assert!(serve.contains(".TH tether-serve 1"), "{serve}");
    assert!(serve.contains("\\-\\-listen") && serve.contains("\\-\\-max\\-message\\-size"), "{serve}");
    let out = Command::new(BIN).args(["man", "dance"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve"));

    let dir = std::env::temp_dir().join(format!("tether-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    tether(&["man", "--dir", dir.to_str().unwrap()]);
    for name in ["tether.1", "tether-serve.1", "tether-connect.1", "tether-echo.1", "tether-bench.1", "tether-bench-echo.1"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(".TH"), "{name}");
    }
    assert!(std::fs::read_to_string(dir.join("tether-serve.1")).unwrap().contains("\\-\\-listen"));
    let _ = std::fs::remove_dir_all(&dir);
}
