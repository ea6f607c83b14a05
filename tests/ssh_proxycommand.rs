//! A real non-HTTP protocol end to end: OpenSSH through the CLI as its `ProxyCommand`, through
//! a real Squid (plain and TLS listeners) to an sshd on loopback, running a remote command.

mod support;

use std::time::Duration;

use support::squid::Squid;
use support::sshd::Sshd;

#[test]
fn ssh_runs_a_command_through_the_cli_and_squid() {
    let Some(sshd) = Sshd::start() else { return };
    let Some(squid) = Squid::start(&[sshd.port]) else {
        return;
    };
    let cli = env!("CARGO_BIN_EXE_connect-tunnel");
    let ca = squid.ca.ca_pem_path.display().to_string();
    for url in [squid.plain_url(true), squid.tls_url(true)] {
        // ssh substitutes %h and %p, so the URL's percent-encoded space is written %%20.
        let url = url.replace('%', "%%");
        let proxy_command = format!("{cli} -x '{url}' --proxy-cacert {ca} %h:%p");
        let mut ssh = sshd.ssh_command(&proxy_command, "echo tunnelled-$((6*7)); uname -s");
        let out = support::output_with_timeout(&mut ssh, Duration::from_secs(30)).unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ssh via {url} failed: {:?}\nstderr: {}\nsshd log: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            sshd.log()
        );
        assert_eq!(stdout, "tunnelled-42\nLinux\n", "via {url}");
    }
}
