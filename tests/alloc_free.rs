//! The data path allocates nothing: after the hand-off, reading and writing a plain tunnel
//! (split halves on two threads) makes zero heap allocations over 256 MiB each way. A counting
//! global allocator counts, per thread, the allocations the current thread makes.
//!
//! Over TLS, rustls's buffered API allocates per record; that is known. The TLS test prints the
//! allocations per MiB and asserts only that live heap bytes do not grow with the transfer.
//!
//! The two tests take a lock so that their live-heap figures are not mixed.

mod scripted;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use connect_tunnel::{Config, TunnelReader, TunnelWriter};
use scripted::tls::{serve_tls, url, Ca, TlsStream};
use scripted::{connector, read_head, serve, target, within, CLIENT_TIMEOUT};

// ---------------------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread.
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// Bytes currently allocated, all threads.
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

struct Counting;

fn count(bytes: isize) {
    // `try_with`: a thread being torn down has no slot any more; its allocations are not ours.
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
    LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; the counting touches only a
// const-initialised thread-local `Cell` (no lazy initialisation, no destructor, so it cannot
// allocate or recurse) and an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn thread_allocs() -> u64 {
    THREAD_ALLOCS.with(Cell::get)
}

fn live_bytes() -> isize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// One test at a time in this binary: live-heap figures are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// The transfer
// ---------------------------------------------------------------------------------------------

const MIB: u64 = 1024 * 1024;
/// Bytes each way.
const TOTAL: u64 = 256 * MIB;
/// Pattern period: prime, so no chunk or buffer size lines up with it.
const PERIOD: usize = 65_521;
/// Largest single write and read.
const CHUNK: usize = 32 * 1024;
/// Bound on the whole transfer (about 2 s each way on a quiet machine, in a debug build).
const LIMIT: Duration = Duration::from_secs(300);
/// A stall longer than this in one read or write fails the test.
const STALL: Duration = Duration::from_secs(10);

fn bound_stalls(sock: &TcpStream) {
    sock.set_read_timeout(Some(STALL)).unwrap();
    sock.set_write_timeout(Some(STALL)).unwrap();
}

/// `2 * PERIOD` bytes of a pattern with period `PERIOD`: any window of up to `PERIOD` bytes
/// starting at `offset % PERIOD` is contiguous in it.
fn doubled_pattern() -> Arc<Vec<u8>> {
    let one: Vec<u8> = (0..PERIOD)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect();
    Arc::new([one.clone(), one].concat())
}

/// What one side of the transfer saw, counted on its own thread.
#[derive(Debug)]
struct Side {
    bytes: u64,
    allocs: u64,
    elapsed: Duration,
}

/// Writes `TOTAL` bytes from the fixed pattern buffer, then ends the direction.
fn write_side(mut writer: TunnelWriter, pattern: Arc<Vec<u8>>) -> (Side, TunnelWriter) {
    let started = Instant::now();
    let before = thread_allocs();
    let mut sent = 0u64;
    while sent < TOTAL {
        let off = (sent % PERIOD as u64) as usize;
        let len = CHUNK.min((TOTAL - sent) as usize);
        let n = writer
            .write(&pattern[off..off + len])
            .expect("tunnel write");
        assert!(n > 0, "write returned 0");
        sent += n as u64;
    }
    writer.flush().expect("flush");
    let allocs = thread_allocs() - before;
    let elapsed = started.elapsed();
    writer.shutdown_write().expect("shutdown_write");
    (
        Side {
            bytes: sent,
            allocs,
            elapsed,
        },
        writer,
    )
}

/// Live heap bytes sampled by the reading side once per `SAMPLE_EVERY` bytes.
const SAMPLE_EVERY: u64 = 8 * MIB;
const SAMPLES: usize = (TOTAL / SAMPLE_EVERY) as usize;

/// Reads `TOTAL` bytes into one fixed buffer and checks each against the pattern. Also samples
/// the process's live heap bytes (into a preallocated array).
fn read_side(
    mut reader: TunnelReader,
    pattern: Arc<Vec<u8>>,
) -> (Side, Box<[isize; SAMPLES]>, TunnelReader) {
    let mut samples = Box::new([0isize; SAMPLES]);
    let mut buf = vec![0u8; CHUNK];
    let started = Instant::now();
    let before = thread_allocs();
    let mut got = 0u64;
    let mut next_sample = SAMPLE_EVERY;
    while got < TOTAL {
        let n = reader.read(&mut buf).expect("tunnel read");
        assert!(n > 0, "EOF after {got} of {TOTAL} bytes");
        let off = (got % PERIOD as u64) as usize;
        assert!(buf[..n] == pattern[off..off + n], "bytes differ at {got}");
        got += n as u64;
        while got >= next_sample && next_sample <= TOTAL {
            samples[(next_sample / SAMPLE_EVERY) as usize - 1] = live_bytes();
            next_sample += SAMPLE_EVERY;
        }
    }
    let allocs = thread_allocs() - before;
    let elapsed = started.elapsed();
    (
        Side {
            bytes: got,
            allocs,
            elapsed,
        },
        samples,
        reader,
    )
}

/// Runs the two sides on their own threads and waits (bounded) for both.
fn transfer(
    reader: TunnelReader,
    writer: TunnelWriter,
) -> (
    Side,
    Side,
    Box<[isize; SAMPLES]>,
    TunnelReader,
    TunnelWriter,
) {
    let pattern = doubled_pattern();
    let p = pattern.clone();
    let writing = thread::spawn(move || write_side(writer, p));
    let reading = thread::spawn(move || read_side(reader, pattern));
    within(LIMIT, "transfer", move || {
        let (read, samples, reader) = reading.join().expect("reader thread");
        let (write, writer) = writing.join().expect("writer thread");
        (read, write, samples, reader, writer)
    })
}

/// The proxy side: answer 200, then echo until EOF. Returns the bytes echoed.
fn echo<S: Read + Write>(s: &mut S) -> u64 {
    read_head(s);
    s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut echoed = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return echoed,
            Ok(n) => {
                s.write_all(&buf[..n]).unwrap();
                echoed += n as u64;
            }
            Err(e) => panic!("echo: read failed after {echoed} bytes: {e}"),
        }
    }
}

fn mib_per_s(side: &Side) -> f64 {
    side.bytes as f64 / MIB as f64 / side.elapsed.as_secs_f64()
}

#[test]
fn the_counter_counts_this_threads_allocations_only() {
    let _serial = serial();
    let before = thread_allocs();
    let v = black_box(vec![7u8; 100]);
    assert_eq!(thread_allocs() - before, 1, "this thread's allocation");
    // Another thread allocates while this one waits (spawning itself allocates here, so the
    // window opens after the spawn).
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let b2 = barrier.clone();
    let other = thread::spawn(move || {
        b2.wait();
        let n = black_box(vec![1u8; 100]).len();
        b2.wait();
        n
    });
    let before = thread_allocs();
    barrier.wait();
    barrier.wait();
    assert_eq!(thread_allocs() - before, 0, "another thread's allocation");
    assert_eq!(other.join().unwrap(), 100);
    drop(v);
}

#[test]
fn plain_tunnel_data_path_allocates_nothing() {
    let _serial = serial();
    let proxy = serve(|mut s: TcpStream| {
        let echoed = echo(&mut s);
        s.shutdown(Shutdown::Write).unwrap();
        echoed
    });
    let tunnel = proxy.connector().connect(&target()).expect("tunnel");
    bound_stalls(tunnel.get_ref());
    let (reader, writer) = tunnel.split();
    let (read, write, _samples, reader, writer) = transfer(reader, writer);
    drop((reader, writer));
    assert_eq!(proxy.finish(), TOTAL);
    println!(
        "plain: wrote {} MiB in {:?} ({:.0} MiB/s), {} allocations; read {} MiB in {:?}, {} allocations",
        write.bytes / MIB,
        write.elapsed,
        mib_per_s(&write),
        write.allocs,
        read.bytes / MIB,
        read.elapsed,
        read.allocs
    );
    assert_eq!((write.bytes, read.bytes), (TOTAL, TOTAL));
    assert_eq!(write.allocs, 0, "allocations on the writing thread");
    assert_eq!(read.allocs, 0, "allocations on the reading thread");
}

#[test]
fn tls_tunnel_live_heap_does_not_grow() {
    let _serial = serial();
    let ca = Ca::new("alloc CA");
    let proxy = serve_tls(ca.server_config("localhost"), |mut tls: TlsStream| {
        let echoed = echo(&mut tls);
        tls.conn.send_close_notify();
        let _ = tls.flush();
        echoed
    });
    let config = Config::default()
        .connect_timeout(CLIENT_TIMEOUT)
        .proxy_ca_pem(ca.pem.clone());
    let tunnel = connector(&url(&proxy), config)
        .connect(&target())
        .expect("tunnel");
    bound_stalls(tunnel.get_ref());
    let (reader, writer) = tunnel.split();
    let (read, write, samples, reader, writer) = transfer(reader, writer);
    drop((reader, writer));
    assert_eq!(proxy.finish(), TOTAL);
    let per_mib = |side: &Side| side.allocs as f64 / (side.bytes / MIB) as f64;
    println!(
        "TLS: wrote {} MiB in {:?} ({:.0} MiB/s), {} allocations ({:.1}/MiB); \
         read {} MiB in {:?}, {} allocations ({:.1}/MiB)",
        write.bytes / MIB,
        write.elapsed,
        mib_per_s(&write),
        write.allocs,
        per_mib(&write),
        read.bytes / MIB,
        read.elapsed,
        read.allocs,
        per_mib(&read)
    );
    println!(
        "TLS: live heap bytes every {} MiB: {samples:?}",
        SAMPLE_EVERY / MIB
    );
    assert_eq!((write.bytes, read.bytes), (TOTAL, TOTAL));
    // Warm-up is the first sample; compare the peak of the first quarter with the peak of the
    // last quarter. A leak of even a few bytes per 16 KiB record would show as >= 64 KiB here;
    // the slack covers buffers that are full at one sample and empty at another.
    let quarter = SAMPLES / 4;
    let early = samples[1..=quarter].iter().copied().max().unwrap();
    let late = samples[SAMPLES - quarter..].iter().copied().max().unwrap();
    const SLACK: isize = 512 * 1024;
    assert!(
        late <= early + SLACK,
        "live heap grew with the transfer: {early} bytes early, {late} bytes late"
    );
}
