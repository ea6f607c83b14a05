//! The media path allocates nothing per packet: after construction, the RFC 4571 codec and
//! adapters, the packet queue (drops included) and the media sender's producer and writer
//! threads make zero heap allocations. A counting global allocator counts, per thread, the
//! allocations the current thread makes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_tunnel::media::{
    DropPolicy, FrameDecoder, MediaSender, PacketQueue, PacketReader, PacketWriter, SenderConfig,
    MAX_PACKET,
};

thread_local! {
    /// Allocations (alloc, alloc_zeroed, realloc) made by this thread.
    static THREAD_ALLOCS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; the counting touches only a
// const-initialised thread-local `Cell` (no lazy initialisation, no destructor, so it cannot
// allocate or recurse).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn thread_allocs() -> u64 {
    THREAD_ALLOCS.with(Cell::get)
}

/// Packet sizes that cycle: audio, video, the null packet, the largest packet, odd sizes.
const SIZES: [usize; 8] = [172, 1200, 0, 1, 1500, MAX_PACKET, 13, 999];
/// Packets per test.
const PACKETS: usize = 20_000;

/// Fills `buf` with the packet pattern for packet number `n`.
fn fill(n: usize, buf: &mut [u8]) {
    buf.fill(n as u8);
    if let Some(first) = buf.first_mut() {
        *first = (n as u8).wrapping_mul(31);
    }
}

/// A writer into a fixed buffer that wraps around: it never allocates.
struct Ring {
    buf: Box<[u8]>,
    at: usize,
    written: u64,
}

impl Write for Ring {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(self.buf.len() - self.at);
            self.buf[self.at..self.at + n].copy_from_slice(&rest[..n]);
            self.at = (self.at + n) % self.buf.len();
            rest = &rest[n..];
        }
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that serves one encoded stream again and again, in reads of varying size.
struct Repeat<'a> {
    wire: &'a [u8],
    at: usize,
    reads: usize,
    left: usize,
}

impl Read for Repeat<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        self.reads += 1;
        let want = [1usize, 7, 1500, 65_000, 3][self.reads % 5];
        let n = want
            .min(buf.len())
            .min(self.wire.len() - self.at)
            .min(self.left);
        buf[..n].copy_from_slice(&self.wire[self.at..self.at + n]);
        self.at = (self.at + n) % self.wire.len();
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn codec_and_adapters_allocate_nothing_per_packet() {
    // One cycle of SIZES, encoded, as the reader's source.
    let mut encoder = PacketWriter::new(Vec::new());
    let mut packet = vec![0u8; MAX_PACKET];
    for (n, &size) in SIZES.iter().enumerate() {
        fill(n, &mut packet[..size]);
        encoder.write_packet(&packet[..size]).unwrap();
    }
    let wire = encoder.into_inner();
    let cycles = PACKETS / SIZES.len();

    let mut writer = PacketWriter::new(Ring {
        buf: vec![0u8; 4096].into_boxed_slice(),
        at: 0,
        written: 0,
    });
    let mut reader = PacketReader::new(Repeat {
        wire: &wire,
        at: 0,
        reads: 0,
        left: wire.len() * cycles,
    });
    let mut decoder = FrameDecoder::new();

    let before = thread_allocs();
    let mut packets = 0usize;
    for n in 0..cycles * SIZES.len() {
        let size = SIZES[n % SIZES.len()];
        fill(n % SIZES.len(), &mut packet[..size]);
        writer.write_packet(&packet[..size]).unwrap();
    }
    while let Some(got) = reader.read_packet().unwrap() {
        let n = packets % (SIZES.len() - 1);
        // The null packet is skipped: index past it.
        let index = if n >= 2 { n + 1 } else { n };
        assert_eq!(got.len(), SIZES[index]);
        packets += 1;
    }
    let mut decoded = 0usize;
    for chunk in wire.chunks(977).cycle().take(wire.len().div_ceil(977) * 4) {
        let mut input = chunk;
        while !input.is_empty() {
            let (used, got) = decoder.try_decode(input).unwrap();
            decoded += usize::from(got.is_some());
            input = &input[used..];
        }
    }
    let allocs = thread_allocs() - before;

    assert_eq!(allocs, 0, "allocations in the codec loop");
    assert_eq!(packets, cycles * (SIZES.len() - 1));
    assert_eq!(decoded, 4 * (SIZES.len() - 1));
    assert_eq!(reader.null_packets(), cycles as u64);
    let expected: u64 = SIZES.iter().map(|s| 2 + *s as u64).sum::<u64>() * cycles as u64;
    assert_eq!(writer.get_ref().written, expected);
}

#[test]
fn queue_allocates_nothing_per_packet_or_drop() {
    for policy in [DropPolicy::Oldest, DropPolicy::NonKeyFirst] {
        let mut queue = PacketQueue::new(&SenderConfig {
            max_delay: Some(Duration::from_millis(50)),
            policy,
            queue_bytes: 64 * 1024,
            queue_packets: 64,
            ..SenderConfig::default()
        });
        let mut packet = vec![0u8; 1500];
        let mut out = vec![0u8; MAX_PACKET];
        let t0 = Instant::now();
        let before = thread_allocs();
        for n in 0..PACKETS {
            let now = t0 + Duration::from_micros(n as u64 * 500);
            let size = [160usize, 1200, 1500, 40][n % 4];
            fill(n, &mut packet[..size]);
            queue.push(&packet[..size], n % 4 == 0, now).unwrap();
            // The sink takes one packet for every three sent: a backlog, then drops by the
            // bound and by the storage.
            if n % 3 == 0 {
                if let Some(p) = queue.pop(now, &mut out).unwrap() {
                    assert!(p.len <= 1500);
                    queue.record_written(Duration::from_micros(1200));
                }
            }
        }
        let allocs = thread_allocs() - before;
        let stats = queue.stats();
        assert_eq!(allocs, 0, "{policy:?}");
        assert!(stats.dropped().packets > 1000, "{policy:?}: {stats:?}");
        assert_eq!(stats.accepted.packets, PACKETS as u64);
    }
}

/// Allocations the writer thread made between its 100th write and its last.
static WRITER_ALLOCS: AtomicU64 = AtomicU64::new(u64::MAX);

/// The sender's sink: counts its own thread's allocations, and is slow now and then so that
/// packets queue and some are dropped.
struct CountingSink {
    writes: u64,
    mark: u64,
    bytes: u64,
}

impl Write for CountingSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        if self.writes == 100 {
            self.mark = thread_allocs();
        }
        if self.writes > 100 {
            WRITER_ALLOCS.store(thread_allocs() - self.mark, Ordering::SeqCst);
        }
        if self.writes % 64 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
        self.bytes += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn sender_allocates_nothing_per_packet_on_either_thread() {
    let sender = Arc::new(
        MediaSender::spawn(
            CountingSink {
                writes: 0,
                mark: 0,
                bytes: 0,
            },
            SenderConfig {
                max_delay: Some(Duration::from_millis(2)),
                policy: DropPolicy::NonKeyFirst,
                queue_bytes: 32 * 1024,
                queue_packets: 32,
                ..SenderConfig::default()
            },
        )
        .unwrap(),
    );
    let mut packet = vec![0u8; 1200];
    let before = thread_allocs();
    for n in 0..PACKETS {
        let size = if n % 3 == 0 { 172 } else { 1200 };
        fill(n, &mut packet[..size]);
        sender.send(&packet[..size], n % 3 == 0).unwrap();
        if n % 500 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let producer_allocs = thread_allocs() - before;
    let sender = Arc::into_inner(sender).unwrap();
    let finished = sender.finish();
    assert!(finished.error.is_none());
    let stats = finished.stats;
    assert_eq!(producer_allocs, 0, "allocations on the producer thread");
    assert!(stats.written.packets > 100, "{stats:?}");
    assert_eq!(
        WRITER_ALLOCS.load(Ordering::SeqCst),
        0,
        "allocations on the writer thread"
    );
    assert_eq!(
        stats.accepted,
        stats.written.plus(stats.dropped()),
        "{stats:?}"
    );
    assert_eq!(
        finished.sink.bytes,
        stats.written.bytes + 2 * stats.written.packets
    );
    println!("{stats:?}");
}
