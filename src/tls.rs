//! TLS with rustls (the *ring* provider): the client configuration, the handshake within a
//! deadline, and one TLS session shared by a reading and a writing half.
//!
//! A rustls connection cannot be cloned like a `TcpStream`, yet a relay wants one thread per
//! direction. So the TLS state lives behind a mutex that is never held while a thread is blocked
//! on the socket: a reader reads raw bytes unlocked and only then locks to decrypt; a writer
//! locks to encrypt, then writes the records out under a separate send lock that keeps them in
//! order.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConnection;

use crate::error::{Error, InvalidInput, Phase};
use crate::transport::{
    io_error, remaining, ClientCert, Sink, Source, TlsOptions, TrustAnchors, MAX_PEM_FILE_SIZE,
    TLS_IO_CHUNK,
};

fn tls_material(what: &'static str) -> Error {
    Error::invalid(Phase::AcquireAddresses, InvalidInput::TlsMaterial, what)
}

/// Reads a PEM file whole, through [`Read::take`] so that at most [`MAX_PEM_FILE_SIZE`] + 1
/// bytes are read: a missing or unreadable file, or one over the limit (`/dev/zero` included),
/// is an [`Error::TlsFile`] naming `what` and the path.
fn read_pem_file(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    let fail = |source| Error::TlsFile {
        what,
        path: path.to_owned(),
        source,
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_PEM_FILE_SIZE + 1).read_to_end(&mut pem))
        .map_err(fail)?;
    if pem.len() as u64 > MAX_PEM_FILE_SIZE {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_PEM_FILE_SIZE} bytes, the most a PEM file may hold"),
        )));
    }
    Ok(pem)
}

/// Builds the rustls client configuration (ring provider) once, for every connection.
pub(crate) fn client_config(opts: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|_| tls_material("TLS protocol versions"))?;
    let builder = if opts.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &opts.trust {
            TrustAnchors::WebPki => default_roots(&mut roots)?,
            TrustAnchors::PemFile(path) => {
                let pem = read_pem_file(path, "CA file")?;
                add_roots(&mut roots, CertificateDer::pem_slice_iter(&pem))?;
            }
            TrustAnchors::Pem(pem) => {
                add_roots(&mut roots, CertificateDer::pem_slice_iter(pem))?;
            }
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let config = match &opts.client_cert {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let bad_cert = |_| tls_material("client certificate");
            let (chain, key) = match client {
                ClientCert::Files { cert, key } => (
                    CertificateDer::pem_slice_iter(&read_pem_file(cert, "client certificate")?)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(bad_cert)?,
                    PrivateKeyDer::from_pem_slice(&read_pem_file(key, "client key")?)
                        .map_err(|_| tls_material("client key"))?,
                ),
                ClientCert::Pem { cert, key } => (
                    CertificateDer::pem_slice_iter(cert)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(bad_cert)?,
                    PrivateKeyDer::from_pem_slice(key).map_err(|_| tls_material("client key"))?,
                ),
            };
            if chain.is_empty() {
                return Err(tls_material("client certificate (no certificate in it)"));
            }
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| tls_material("client certificate and key"))?
        }
    };
    Ok(Arc::new(config))
}

/// The default trust ([`TrustAnchors::WebPki`]): the Mozilla roots built into the binary.
#[cfg(feature = "webpki-roots")]
fn default_roots(roots: &mut rustls::RootCertStore) -> Result<(), Error> {
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(())
}

/// The default trust ([`TrustAnchors::WebPki`]) in a build without the built-in roots: the
/// system's CA bundle.
#[cfg(not(feature = "webpki-roots"))]
fn default_roots(roots: &mut rustls::RootCertStore) -> Result<(), Error> {
    let candidates = crate::transport::SYSTEM_CA_BUNDLES.map(std::path::Path::new);
    system_roots(roots, &candidates).map(drop)
}

/// What is wrong when no system CA bundle exists: the paths tried (those of
/// [`SYSTEM_CA_BUNDLES`](crate::transport::SYSTEM_CA_BUNDLES)) and the ways out.
#[cfg(any(test, not(feature = "webpki-roots")))]
const NO_SYSTEM_CA_BUNDLE: &str = "default trust: no system CA bundle found (tried \
    /etc/ssl/certs/ca-certificates.crt, /etc/pki/tls/certs/ca-bundle.crt, /etc/ssl/cert.pem); \
    give a CA file (--proxy-cacert / --cacert, Config::proxy_ca_file / target_ca_file), install \
    the system's CA certificates, or build with the `webpki-roots` feature";

/// The system CA bundle that exists, unusable.
#[cfg(any(test, not(feature = "webpki-roots")))]
const BAD_SYSTEM_CA_BUNDLE: &str = "default trust: system CA bundle (the first of \
    /etc/ssl/certs/ca-certificates.crt, /etc/pki/tls/certs/ca-bundle.crt, /etc/ssl/cert.pem \
    that exists) could not be read or holds no usable certificate";

/// Adds the certificates of the first file in `candidates` that exists (as curl picks its CA
/// bundle) and returns its path. None existing, malformed PEM or no usable certificate is a
/// [`InvalidInput::TlsMaterial`] error that says so; a file that cannot be read or is over
/// [`MAX_PEM_FILE_SIZE`] is an [`Error::TlsFile`] naming it. Certificates the
/// verifier cannot use as trust anchors are skipped, as every TLS client does with system
/// bundles: that trusts fewer roots, never more.
#[cfg(any(test, not(feature = "webpki-roots")))]
fn system_roots<'a>(
    roots: &mut rustls::RootCertStore,
    candidates: &[&'a std::path::Path],
) -> Result<&'a std::path::Path, Error> {
    let path = candidates
        .iter()
        .copied()
        .find(|path| path.is_file())
        .ok_or_else(|| tls_material(NO_SYSTEM_CA_BUNDLE))?;
    let pem = read_pem_file(path, "system CA bundle")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| tls_material(BAD_SYSTEM_CA_BUNDLE))?;
    let (added, skipped) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(tls_material(BAD_SYSTEM_CA_BUNDLE));
    }
    log::debug!(
        "default trust: {added} CA certificates from {}{}",
        path.display(),
        if skipped > 0 {
            " (some unusable ones skipped)"
        } else {
            ""
        }
    );
    Ok(path)
}

/// The default trust and the system CA bundle look-up (here, not at the end of the file, to keep
/// them beside the code they test).
#[cfg(test)]
mod default_trust_tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::transport::SYSTEM_CA_BUNDLES;

    /// A fresh directory for one test's files, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("connect-tunnel-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ca_pem(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn tls_material_what(result: Result<&Path, Error>) -> &'static str {
        match result {
            Err(Error::InvalidInput {
                phase: Phase::AcquireAddresses,
                kind: InvalidInput::TlsMaterial,
                what,
            }) => what,
            other => panic!("expected a TlsMaterial error, got {other:?}"),
        }
    }

    #[test]
    fn the_first_existing_bundle_is_used() {
        let dir = TempDir::new("first-bundle");
        let first = dir.file("first.pem", [ca_pem("a"), ca_pem("b")].concat().as_bytes());
        let second = dir.file("second.pem", ca_pem("c").as_bytes());
        let missing = dir.0.join("missing.pem");
        // A directory where a bundle could be is passed over like a missing file.
        let candidates = [missing.as_path(), dir.0.as_path(), &first, &second];
        let mut roots = rustls::RootCertStore::empty();
        assert_eq!(system_roots(&mut roots, &candidates).unwrap(), first);
        assert_eq!(roots.len(), 2, "only the first existing bundle is read");

        let mut roots = rustls::RootCertStore::empty();
        assert_eq!(
            system_roots(&mut roots, &[&missing, &second]).unwrap(),
            second
        );
        assert_eq!(roots.len(), 1);
    }

    #[test]
    fn no_bundle_is_an_error_naming_the_paths_and_the_fix() {
        let dir = TempDir::new("no-bundle");
        let missing = [dir.0.join("a.crt"), dir.0.join("b.crt")];
        let candidates: Vec<&Path> = missing.iter().map(PathBuf::as_path).collect();
        let mut roots = rustls::RootCertStore::empty();
        let what = tls_material_what(system_roots(&mut roots, &candidates));
        assert_eq!(what, NO_SYSTEM_CA_BUNDLE);
        // The message lists the real candidates (kept in step with SYSTEM_CA_BUNDLES).
        for path in SYSTEM_CA_BUNDLES {
            assert!(what.contains(path), "{path} missing from: {what}");
        }
        assert!(what.contains("--proxy-cacert"), "{what}");
        assert!(what.contains("webpki-roots"), "{what}");
        assert!(roots.is_empty());
    }

    #[test]
    fn an_unusable_bundle_is_an_error_not_a_fallback() {
        let dir = TempDir::new("bad-bundle");
        let good = dir.file("good.pem", ca_pem("good").as_bytes());
        for (name, contents) in [
            ("empty.pem", &b""[..]),
            ("text.pem", b"no certificates here\n"),
            (
                "broken.pem",
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            ),
        ] {
            let bad = dir.file(name, contents);
            let mut roots = rustls::RootCertStore::empty();
            let what = tls_material_what(system_roots(&mut roots, &[&bad, &good]));
            assert_eq!(what, BAD_SYSTEM_CA_BUNDLE, "{name}");
            assert!(roots.is_empty(), "{name}");
        }
    }

    /// The `Error::TlsFile` in `result`, checked to name `what` and `path`; returns its source.
    fn tls_file_error<T: std::fmt::Debug>(
        result: Result<T, Error>,
        what: &str,
        path: &Path,
    ) -> io::Error {
        match result {
            Err(e @ Error::TlsFile { .. }) => {
                let shown = e.to_string();
                assert!(shown.contains(&path.display().to_string()), "{shown}");
                assert_eq!(e.exit_code(), 2);
                let Error::TlsFile {
                    what: got,
                    path: got_path,
                    source,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!((got, got_path.as_path()), (what, path));
                source
            }
            other => panic!("expected a TlsFile error, got {other:?}"),
        }
    }

    fn trusting(path: &Path) -> TlsOptions {
        TlsOptions {
            trust: TrustAnchors::PemFile(path.to_owned()),
            ..TlsOptions::default()
        }
    }

    /// A missing file is named, with the system's error.
    #[test]
    fn a_missing_file_is_named_with_the_os_error() {
        let dir = TempDir::new("missing-pem");
        let missing = dir.0.join("nonexistent.pem");
        let source = tls_file_error(client_config(&trusting(&missing)), "CA file", &missing);
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        let shown = client_config(&trusting(&missing)).unwrap_err().to_string();
        assert!(shown.contains("os error"), "{shown}");
    }

    /// Every PEM file is read up to `MAX_PEM_FILE_SIZE`: one byte more is refused, naming the
    /// file, whichever role it has; exactly the limit is read.
    #[test]
    fn pem_files_over_the_size_limit_are_refused() {
        let dir = TempDir::new("big-pem");
        let limit = MAX_PEM_FILE_SIZE as usize;
        let ca = ca_pem("big");
        let padded = |len: usize| {
            let mut pem = ca.clone().into_bytes();
            pem.resize(len, b'\n');
            pem
        };
        let exact = dir.file("exact.pem", &padded(limit));
        client_config(&trusting(&exact)).expect("a CA file of exactly the limit");
        let big = dir.file("big.pem", &padded(limit + 1));
        let source = tls_file_error(client_config(&trusting(&big)), "CA file", &big);
        assert_eq!(source.kind(), io::ErrorKind::InvalidData);
        assert!(source.to_string().contains("1048576"), "{source}");

        let mut roots = rustls::RootCertStore::empty();
        tls_file_error(system_roots(&mut roots, &[&big]), "system CA bundle", &big);

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["device".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert = dir.file("cert.pem", cert.pem().as_bytes());
        let key = dir.file("key.pem", key.serialize_pem().as_bytes());
        let with_client = |cert: &Path, key: &Path| {
            client_config(&TlsOptions {
                client_cert: Some(ClientCert::Files {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                }),
                verify: false,
                ..TlsOptions::default()
            })
        };
        with_client(&cert, &key).expect("a small client certificate and key");
        tls_file_error(with_client(&big, &key), "client certificate", &big);
        tls_file_error(with_client(&cert, &big), "client key", &big);
    }

    /// A file that never ends is refused after the limit, not read until memory runs out.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_file_that_never_ends_is_refused() {
        let zero = Path::new("/dev/zero");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(client_config(&trusting(zero)).map(drop));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("still reading /dev/zero after 20 s");
        let source = tls_file_error(result, "CA file", zero);
        assert_eq!(source.kind(), io::ErrorKind::InvalidData);
    }

    /// Built with the Mozilla roots: the default trust is exactly those.
    #[cfg(feature = "webpki-roots")]
    #[test]
    fn default_trust_is_the_built_in_roots() {
        let mut roots = rustls::RootCertStore::empty();
        default_roots(&mut roots).unwrap();
        assert_eq!(roots.len(), webpki_roots::TLS_SERVER_ROOTS.len());
    }

    /// Built without them: the default trust is the system's bundle, or a clear error when the
    /// machine has none; verification stays on.
    #[cfg(not(feature = "webpki-roots"))]
    #[test]
    fn default_trust_is_the_system_bundle() {
        let present = SYSTEM_CA_BUNDLES.iter().find(|p| Path::new(p).is_file());
        let mut roots = rustls::RootCertStore::empty();
        let result = default_roots(&mut roots);
        let config = client_config(&TlsOptions::default());
        match present {
            Some(path) => {
                result.unwrap();
                assert!(!roots.is_empty(), "no certificate taken from {path}");
                config.unwrap();
            }
            None => {
                assert_eq!(
                    tls_material_what(result.map(|()| Path::new(""))),
                    NO_SYSTEM_CA_BUNDLE
                );
                assert!(config.is_err());
            }
        }
    }
}

fn add_roots<'a>(
    roots: &mut rustls::RootCertStore,
    certs: impl Iterator<Item = Result<CertificateDer<'a>, rustls::pki_types::pem::Error>>,
) -> Result<(), Error> {
    for cert in certs {
        let cert = cert.map_err(|_| tls_material("CA file"))?;
        roots
            .add(cert)
            .map_err(|_| tls_material("CA certificate"))?;
    }
    if roots.is_empty() {
        return Err(tls_material("CA file (no certificate in it)"));
    }
    Ok(())
}

/// Accepts any certificate and name, but still checks handshake signatures. Used only when the
/// caller turned verification off.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A `Source` seen as a plain `Read`, bounded by one deadline.
struct Bounded<'a, S: ?Sized>(&'a mut S, Option<Instant>);

impl<S: Source + ?Sized> Read for Bounded<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_by(buf, self.1)
    }
}

/// Runs a TLS client handshake reading from `src` and writing to `sink` within `deadline`, one
/// operation at a time so that a peer that dribbles bytes still meets the deadline. Errors are
/// made with `fail` (the proxy's TLS or the target's), except the deadline, which is
/// [`Error::Timeout`] in `phase`.
pub(crate) fn handshake(
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    src: &mut dyn Source,
    sink: &mut dyn Sink,
    deadline: Instant,
    phase: Phase,
    fail: fn(io::Error) -> Error,
) -> Result<ClientConnection, Error> {
    let failed = |e: io::Error| match io_error(e, phase) {
        Error::Io { source, .. } => fail(source),
        other => other,
    };
    let mut conn = ClientConnection::new(config, server_name)
        .map_err(|e| fail(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    while conn.is_handshaking() {
        while conn.wants_write() {
            sink.set_write_timeout(Some(remaining(deadline, phase)?))
                .map_err(failed)?;
            conn.write_tls(sink).map_err(failed)?;
        }
        sink.flush().map_err(failed)?;
        if !conn.is_handshaking() {
            break;
        }
        remaining(deadline, phase)?;
        let n = match conn.read_tls(&mut Bounded(src, Some(deadline))) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(failed(e)),
        };
        if n == 0 {
            return Err(fail(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection during the TLS handshake",
            )));
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the peer why, if we can; the error that matters is ours.
            let _ = conn.write_tls(sink);
            return Err(fail(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
    }
    // The last flight (the client's Finished) is queued when the handshake completes: send it
    // now, since a peer that speaks first waits for it.
    while conn.wants_write() {
        sink.set_write_timeout(Some(remaining(deadline, phase)?))
            .map_err(failed)?;
        conn.write_tls(sink).map_err(failed)?;
    }
    sink.flush().map_err(failed)?;
    sink.set_write_timeout(None).map_err(failed)?;
    Ok(conn)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave the TLS state half-updated in a way that matters more
    // than the panic itself; keep going with what is there.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `e` carries a rustls error (an alert from the peer, a protocol violation).
pub(crate) fn is_tls_failure(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

fn tls_data_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The sending side of a TLS session: where records go, and the buffer they are staged in.
struct TlsSend<W> {
    sink: W,
    staging: Box<[u8]>,
}

/// One TLS session shared by a reading half and a writing half.
pub(crate) struct TlsShared<W> {
    conn: Mutex<ClientConnection>,
    send: Mutex<TlsSend<W>>,
}

impl<W: Sink> TlsShared<W> {
    pub(crate) fn new(conn: ClientConnection, sink: W) -> TlsShared<W> {
        TlsShared {
            conn: Mutex::new(conn),
            send: Mutex::new(TlsSend {
                sink,
                staging: vec![0; TLS_IO_CHUNK].into_boxed_slice(),
            }),
        }
    }

    /// Writes out every record the TLS state has queued, in order.
    fn send_pending(&self, send: &mut TlsSend<W>) -> io::Result<()> {
        loop {
            let n = {
                let mut conn = lock(&self.conn);
                if !conn.wants_write() {
                    return send.sink.flush();
                }
                conn.write_tls(&mut &mut send.staging[..])?
            };
            send.sink.write_all(&send.staging[..n])?;
        }
    }

    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let n = {
            let mut send = lock(&self.send);
            let n = lock(&self.conn).writer().write(buf)?;
            self.send_pending(&mut send)?;
            n
        };
        self.send_pending_if_free()?;
        Ok(n)
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        {
            let mut send = lock(&self.send);
            self.send_pending(&mut send)?;
        }
        self.send_pending_if_free()
    }

    /// Sends what is queued unless the other half holds the send lock.
    ///
    /// The reading half must never wait for that lock: the writing half may be blocked in a
    /// socket write to a peer that is itself waiting for this side to read. Whoever holds the
    /// lock sends everything queued before letting go, and looks again after letting go, so a
    /// record the reading half queues (an alert, a key update) is sent by one of the two.
    fn send_pending_if_free(&self) -> io::Result<()> {
        loop {
            match self.send.try_lock() {
                Ok(mut send) => self.send_pending(&mut send)?,
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    self.send_pending(&mut p.into_inner())?
                }
                Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
            }
            if !lock(&self.conn).wants_write() {
                return Ok(());
            }
        }
    }

    /// Sends `close_notify`, then ends the sink's sending direction.
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        let mut send = lock(&self.send);
        lock(&self.conn).send_close_notify();
        self.send_pending(&mut send)?;
        send.sink.shutdown_write()
    }

    /// Bounds the sink's writes that follow.
    pub(crate) fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        lock(&self.send).sink.set_write_timeout(t)
    }

    /// Reads plaintext into `out`, reading raw bytes from `src` into `raw` when it holds none.
    /// `Ok(0)` means the peer ended the TLS stream properly; an `UnexpectedEof` error means the
    /// connection ended without `close_notify`.
    ///
    /// rustls refuses more records while it holds over 16 KiB of decrypted data, and a record
    /// completed by one read may be followed by more in the same read. So raw bytes are handed
    /// over one `read_tls` call at a time, only once the decrypted data has been read out; what
    /// rustls did not take waits in `raw` for the next call.
    ///
    /// Once some plaintext is in `out`, the records already in `raw` are decrypted into the
    /// rest of `out` too, so one call can return several records; it reads the socket only
    /// while `out` is still empty. A failure (a record that does not decrypt, an alert) is
    /// kept in `raw` until every record decrypted before it has been read out, then returned:
    /// no decrypted byte is lost.
    pub(crate) fn read(
        &self,
        src: &mut dyn Source,
        raw: &mut RawBuf,
        out: &mut [u8],
        deadline: Option<Instant>,
    ) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut filled = 0;
        loop {
            match lock(&self.conn).reader().read(&mut out[filled..]) {
                Ok(n) if n > 0 => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(_) if filled > 0 => return Ok(filled),
                Err(e) if filled > 0 => {
                    raw.failed = Some(e);
                    return Ok(filled);
                }
                other => return other,
            }
            // Records decrypted before a failure are read out above before it is reported.
            if let Some(e) = raw.failed.take() {
                if filled > 0 {
                    raw.failed = Some(e);
                    return Ok(filled);
                }
                return Err(e);
            }
            let pending = raw.start < raw.end;
            if filled == out.len() || (filled > 0 && !pending) {
                return Ok(filled);
            }
            let eof = !pending && {
                let n = match src.read_by(&mut raw.buf, deadline) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                (raw.start, raw.end) = (0, n);
                n == 0
            };
            let wants_write = {
                let mut conn = lock(&self.conn);
                let mut chunk = &raw.buf[raw.start..raw.end];
                let taken = conn.read_tls(&mut chunk)?;
                debug_assert!(taken > 0 || eof);
                raw.start += taken;
                if let Err(e) = conn.process_new_packets() {
                    drop(conn);
                    let _ = self.send_pending_if_free();
                    // Reported after the plaintext rustls decrypted before the failure.
                    raw.failed = Some(tls_data_error(e));
                    continue;
                }
                conn.wants_write()
            };
            if wants_write {
                self.send_pending_if_free()?;
            }
        }
    }
}

/// Raw bytes read for a TLS session and not yet handed to it: `buf[start..end]`.
pub(crate) struct RawBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// An error met after plaintext was already returned, for the next read.
    failed: Option<io::Error>,
}

impl RawBuf {
    pub(crate) fn new() -> RawBuf {
        RawBuf {
            buf: vec![0; TLS_IO_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            failed: None,
        }
    }
}
