//! Proves the sshd test harness (tests/support): a real sshd answers with an SSH banner and a
//! key login with the system `ssh` client succeeds.
#![cfg(unix)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{output_with_timeout, Sshd};

#[test]
fn sshd_banner_and_login() {
    let started = Instant::now();
    let Some(sshd) = Sshd::start() else {
        return;
    };
    eprintln!("sshd ready in {:?}", started.elapsed());

    let banner = support::sshd::read_banner(sshd.port).expect("banner");
    assert!(banner.starts_with("SSH-2.0-"), "banner {banner:?}");

    let mut ssh = sshd.ssh_command("none", "echo connect-tunnel-ok");
    let out = output_with_timeout(&mut ssh, Duration::from_secs(30)).expect("run ssh");
    assert!(
        out.status.success(),
        "ssh failed ({}): {}\n--- sshd.log ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "connect-tunnel-ok"
    );

    let mut ssh = sshd.ssh_command("none", "true");
    let out = output_with_timeout(&mut ssh, Duration::from_secs(30)).expect("run ssh");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pid = sshd.pid();
    let dir = sshd.dir.clone();
    let t = Instant::now();
    drop(sshd);
    eprintln!("sshd stopped in {:?}", t.elapsed());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sshd {pid} not reaped"
    );
    if std::env::var_os(support::KEEP_DIRS_ENV).is_none() {
        assert!(!dir.exists(), "sshd dir left behind");
    }
}
