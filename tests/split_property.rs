//! Property: the way a proxy's reply is cut into reads never changes what `establish` decides
//! nor the bytes the tunnel yields.
//!
//! - For any valid success reply (status 200-299, a random reason or none, HTTP/1.0 or 1.1,
//!   0-10 random valid headers, CRLF, bare LF or both mixed, 0-3 interim 1xx replies before it)
//!   followed by arbitrary tunnel bytes, delivered in any split (random cut points, or one
//!   byte per read), the tunnel opens and yields exactly the tunnel bytes, and the outcome and
//!   the request written are those of the unsplit delivery.
//! - A random 4xx/5xx reply (random headers, sometimes a Basic/Negotiate challenge, sometimes a
//!   body framed by Content-Length or chunked, sometimes interim replies first) in any split
//!   always gives the same error, of the variant the status calls for.
//!
//! The cases come from a small seeded generator (splitmix64) rather than proptest: no new
//! dev-dependency (proptest 1.12 wants Rust 1.88, above this crate's `rust-version`), the same
//! cases on every run, and a failure prints its seed and the cut points reduced to a minimal
//! set. `SPLIT_PROPERTY_CASES` (default 3000 per property) and `SPLIT_PROPERTY_SEED` change
//! the run.

mod fuzz_checks;

use fuzz_checks::{run_establish, Run, ScriptedProxy};

/// splitmix64: tiny, deterministic, good enough to pick test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() - 1)]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.range(0, max);
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `len` characters drawn from `alphabet`.
    fn text(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len).map(|_| *self.pick(alphabet) as char).collect()
    }
}

const TOKEN: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~";

/// Printable ASCII without space: the first and last character of a reason or value.
fn visible() -> Vec<u8> {
    (0x21..=0x7e).collect()
}

/// Printable ASCII with space and tab.
fn printable() -> Vec<u8> {
    let mut v: Vec<u8> = (0x20..=0x7e).collect();
    v.push(b'\t');
    v
}

/// A reason phrase or header value: empty, or starting and ending with a visible character.
fn field_text(rng: &mut Rng, max: usize) -> String {
    match rng.range(0, max) {
        0 => String::new(),
        1 => rng.text(&visible(), 1),
        n => {
            let mut s = rng.text(&visible(), 1);
            s.push_str(&rng.text(&printable(), n - 2));
            s.push_str(&rng.text(&visible(), 1));
            s
        }
    }
}

/// One reply head; `eol` picks CRLF or LF for each line (status line, headers, empty line).
struct Head {
    version: u8,
    status: u16,
    reason: String,
    /// Whether an empty reason still gets its separating space.
    space_without_reason: bool,
    headers: Vec<(String, String)>,
    eol: Vec<bool>,
}

impl Head {
    fn random(rng: &mut Rng, status: u16, max_headers: usize) -> Head {
        let headers = (0..rng.range(0, max_headers))
            .map(|_| {
                let len = rng.range(1, 16);
                (rng.text(TOKEN, len), field_text(rng, 40))
            })
            .collect::<Vec<_>>();
        let eol_mode = rng.range(0, 2);
        let eol = (0..headers.len() + 2)
            .map(|_| match eol_mode {
                0 => true,
                1 => false,
                _ => rng.chance(50),
            })
            .collect();
        Head {
            version: rng.range(0, 1) as u8,
            status,
            reason: field_text(rng, 30),
            space_without_reason: rng.chance(50),
            headers,
            eol,
        }
    }

    fn render(&self) -> Vec<u8> {
        let eol = |crlf: bool| if crlf { "\r\n" } else { "\n" };
        let mut out = format!("HTTP/1.{} {}", self.version, self.status);
        if !self.reason.is_empty() || self.space_without_reason {
            out.push(' ');
        }
        out.push_str(&self.reason);
        out.push_str(eol(self.eol[0]));
        for (i, (name, value)) in self.headers.iter().enumerate() {
            // Blanks around the value are optional.
            let sep = if i % 3 == 0 { ":" } else { ": " };
            out.push_str(&format!("{name}{sep}{value}{}", eol(self.eol[i + 1])));
        }
        out.push_str(eol(self.eol[self.headers.len() + 1]));
        out.into_bytes()
    }
}

/// 0-3 interim replies (1xx except 101).
fn interim(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.range(0, 3) {
        let status = *rng.pick(&[100, 102, 103, 150, 199]);
        out.extend(Head::random(rng, status, 3).render());
    }
    out
}

/// Where the payload is cut into reads.
fn cuts(rng: &mut Rng, len: usize) -> Vec<usize> {
    match rng.range(0, 3) {
        // One byte per read.
        0 => (1..len).collect(),
        // A few random cuts.
        1 | 2 => (0..rng.range(1, 12)).map(|_| rng.range(0, len)).collect(),
        // Every byte of the first few, then the rest at once.
        _ => (1..len.min(40)).collect(),
    }
}

/// What a run gave, comparable across runs.
fn outcome(run: &Run) -> Result<Vec<u8>, String> {
    match &run.result {
        Ok(bytes) => Ok(bytes.clone()),
        Err(e) => Err(format!("{e:?}")),
    }
}

fn run(payload: &[u8], cuts: &[usize]) -> Run {
    run_establish(ScriptedProxy::split(payload, cuts), true)
}

/// The smallest set of cuts (removing one at a time) that still gives `bad`'s outcome.
fn minimal_cuts(payload: &[u8], cuts: &[usize], reference: &Run) -> Vec<usize> {
    let mut cuts: Vec<usize> = cuts.to_vec();
    cuts.sort_unstable();
    cuts.dedup();
    let differs = |c: &[usize]| {
        let r = run(payload, c);
        outcome(&r) != outcome(reference) || r.proxy.written != reference.proxy.written
    };
    let mut i = 0;
    while i < cuts.len() {
        let mut fewer = cuts.clone();
        fewer.remove(i);
        if differs(&fewer) {
            cuts = fewer;
        } else {
            i += 1;
        }
    }
    cuts
}

/// Runs `payload` whole and cut at `cuts`; fails, naming the case, if the outcomes differ.
fn same_in_any_split(seed: u64, case: usize, payload: &[u8], cuts: &[usize]) -> Run {
    let whole = run(payload, &[]);
    let pieces = run(payload, cuts);
    if outcome(&whole) != outcome(&pieces) || whole.proxy.written != pieces.proxy.written {
        let minimal = minimal_cuts(payload, cuts, &whole);
        panic!(
            "seed {seed:#x} case {case}: payload {:?}\ncut at {minimal:?}: {:?}\nwhole: {:?}",
            String::from_utf8_lossy(payload),
            outcome(&run(payload, &minimal)),
            outcome(&whole),
        );
    }
    whole
}

fn settings() -> (u64, usize) {
    let seed = std::env::var("SPLIT_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C0DE);
    let cases = std::env::var("SPLIT_PROPERTY_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    (seed, cases)
}

#[test]
fn success_reply_in_any_split_opens_with_the_same_bytes() {
    let (seed, cases) = settings();
    let mut rng = Rng(seed);
    for case in 0..cases {
        let mut payload = interim(&mut rng);
        let status = rng.range(200, 299) as u16;
        payload.extend(Head::random(&mut rng, status, 10).render());
        let head_len = payload.len();
        // Stream bytes: random, or something that looks like another reply.
        let tunnel = if rng.chance(20) {
            Head::random(&mut rng, 407, 3).render()
        } else {
            rng.bytes(300)
        };
        payload.extend_from_slice(&tunnel);
        let cuts = cuts(&mut rng, payload.len());
        let whole = same_in_any_split(seed, case, &payload, &cuts);
        match whole.result {
            Ok(bytes) => assert_eq!(
                bytes,
                tunnel,
                "seed {seed:#x} case {case}: tunnel bytes of {:?}",
                String::from_utf8_lossy(&payload[..head_len])
            ),
            Err(e) => panic!(
                "seed {seed:#x} case {case}: {e:?} for {:?}",
                String::from_utf8_lossy(&payload[..head_len])
            ),
        }
    }
}

#[test]
fn refusal_in_any_split_gives_the_same_error() {
    let (seed, cases) = settings();
    let mut rng = Rng(seed ^ 0xDEAD_BEEF);
    for case in 0..cases {
        let mut payload = interim(&mut rng);
        let status = rng.range(400, 599) as u16;
        let mut head = Head::random(&mut rng, status, 8);
        let challenge = match (status, rng.range(0, 3)) {
            (407, 0..=2) => Some(("Proxy-Authenticate", rng.range(0, 2))),
            (401, 0..=1) => Some(("WWW-Authenticate", rng.range(0, 2))),
            _ => None,
        };
        if let Some((name, scheme)) = challenge {
            let value = ["Basic realm=\"proxy\"", "Negotiate", "NTLM, Basic realm=x"][scheme];
            head.headers
                .insert(0, (name.to_string(), value.to_string()));
            head.eol.push(true);
        }
        let body = rng.bytes(100);
        match rng.range(0, 2) {
            0 => {
                head.headers
                    .push(("Content-Length".into(), body.len().to_string()));
                head.eol.push(true);
            }
            1 => {
                head.headers
                    .push(("Transfer-Encoding".into(), "chunked".into()));
                head.eol.push(true);
            }
            _ => {}
        }
        payload.extend(head.render());
        if body.is_empty() {
            payload.extend_from_slice(b"0\r\n\r\n");
        } else {
            payload.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            payload.extend_from_slice(&body);
            payload.extend_from_slice(b"\r\n0\r\n\r\n");
        }
        let cuts = cuts(&mut rng, payload.len());
        let whole = same_in_any_split(seed, case, &payload, &cuts);
        // Every 407 is a challenge, even one that names no scheme.
        let expected_auth = challenge.is_some() || status == 407;
        match whole.result {
            Err(connect_tunnel::Error::Auth {
                status: s,
                credentials_sent: true,
                ..
            }) if expected_auth => assert_eq!(s, status),
            Err(connect_tunnel::Error::Refused { status: s, .. }) if !expected_auth => {
                assert_eq!(s, status)
            }
            other => panic!(
                "seed {seed:#x} case {case}: {status} gave {other:?}: {:?}",
                String::from_utf8_lossy(&payload)
            ),
        }
    }
}
