//! The control channel of the relay and the media server: one TCP connection per command, one
//! line in (`rate 400`), one line out (`ok ...` or `error ...`).
//!
//! `hil ctl ADDR COMMAND...` is the client; from a shell, bash's `/dev/tcp` works too.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub type Handler = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Serves commands on `addr` in a background thread; returns the bound address.
pub fn serve(addr: &str, handler: Handler) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("control {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let handler = handler.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut line = String::new();
                let mut reader = BufReader::new(&conn);
                if reader.read_line(&mut line).is_ok() && !line.trim().is_empty() {
                    let reply = handler(line.trim());
                    let mut w = &conn;
                    let _ = w.write_all(format!("{}\n", reply.replace('\n', " ")).as_bytes());
                }
            });
        }
    });
    Ok(local)
}

/// Sends one command; returns the reply line.
pub fn send(addr: &str, command: &str) -> Result<String, String> {
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or(format!("{addr}: no address"))?;
    let mut conn = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
        .map_err(|e| format!("control {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    conn.write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("control {addr}: {e}"))?;
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|e| format!("control {addr}: {e}"))?;
    Ok(line.trim_end().to_owned())
}

pub fn main(args: Vec<String>) -> Result<bool, String> {
    let [addr, words @ ..] = args.as_slice() else {
        return Err("usage: hil ctl ADDR COMMAND [ARGS...]".into());
    };
    if words.is_empty() {
        return Err("usage: hil ctl ADDR COMMAND [ARGS...]".into());
    }
    let reply = send(addr, &words.join(" "))?;
    println!("{reply}");
    Ok(reply.starts_with("ok"))
}
