//! `Content-Encoding` of POST bodies (RFC 9110 §8.4): what PostHog's, Vector's and
//! `CompressionStream`-using tags send. gzip, deflate (zlib, or raw deflate as some clients
//! send it) and zstd are decoded before the body is read as a beacon; the decoded size is capped
//! (`http.max_decoded_body_bytes`), so a small zip bomb costs at most that much memory and is
//! answered 413. Other codings (br included) are refused with 415 rather than stored compressed.

use std::io::Read;

/// A body coding we decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// `gzip` / `x-gzip`.
    Gzip,
    /// `deflate`: zlib-wrapped per the RFC; raw deflate accepted too.
    Deflate,
    /// `zstd`.
    Zstd,
}

/// Why a coded body cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A coding we do not decode (or more than one): 415.
    Unsupported,
    /// The bytes are not what the coding says: 400.
    Corrupt,
    /// Decoded, it is larger than the cap: 413.
    TooLarge,
}

/// The coding named by a `Content-Encoding` value; `None` for `identity` (or empty).
pub(crate) fn coding(value: &[u8]) -> Result<Option<Coding>, DecodeError> {
    let mut found = None;
    for c in value.split(|&b| b == b',') {
        let c = c.trim_ascii().to_ascii_lowercase();
        let this = match c.as_slice() {
            b"" | b"identity" => continue,
            b"gzip" | b"x-gzip" => Coding::Gzip,
            b"deflate" => Coding::Deflate,
            b"zstd" => Coding::Zstd,
            _ => return Err(DecodeError::Unsupported),
        };
        // Stacked codings (`gzip, zstd`) are legal and never sent by a beacon tag.
        if found.replace(this).is_some() {
            return Err(DecodeError::Unsupported);
        }
    }
    Ok(found)
}

/// Decodes `body` into at most `cap` bytes. The whole body is decoded: every gzip member, every
/// zstd frame (skippable frames skipped), and bytes after the end of the coded data are refused
/// as corrupt rather than dropped: part of a body is never stored as if it were the whole.
pub(crate) fn decode(coding: Coding, body: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    match coding {
        // Multi-member: `cat a.gz b.gz` is one valid gzip body (RFC 1952 §2.2); trailing bytes
        // that are not another member are an error in MultiGzDecoder.
        Coding::Gzip => read_capped(flate2::bufread::MultiGzDecoder::new(body), cap),
        Coding::Deflate => match whole_stream(flate2::bufread::ZlibDecoder::new(body), cap) {
            Err(DecodeError::Corrupt) => {
                whole_stream(flate2::bufread::DeflateDecoder::new(body), cap)
            }
            other => other,
        },
        Coding::Zstd => zstd(body, cap),
    }
}

/// A zlib or raw deflate stream that must use every byte of the body.
fn whole_stream<D: Read + Inner>(mut d: D, cap: usize) -> Result<Vec<u8>, DecodeError> {
    let out = read_capped(&mut d, cap)?;
    if !d.rest().is_empty() {
        return Err(DecodeError::Corrupt);
    }
    Ok(out)
}

/// The input a flate2 `bufread` decoder has not consumed.
trait Inner {
    fn rest(&self) -> &[u8];
}

impl Inner for flate2::bufread::ZlibDecoder<&[u8]> {
    fn rest(&self) -> &[u8] {
        self.get_ref()
    }
}

impl Inner for flate2::bufread::DeflateDecoder<&[u8]> {
    fn rest(&self) -> &[u8] {
        self.get_ref()
    }
}

/// zstd frame magic (RFC 8878 §3.1.1) and the skippable-frame magics `0x184D2A5?` (§3.1.2).
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// The largest block a frame may hold (RFC 8878 §3.1.1.2.4): a window below this still
/// needs room for one block.
const ZSTD_MAX_BLOCK: u64 = 128 * 1024;

/// Decodes every frame of a zstd body with a window no larger than it can need here.
///
/// A frame header declares its window (up to 3.75 TB) and a decoder reserves it before the
/// first block: a 64 KB body declaring 128 MiB cost ~2 GB and seconds of a worker. But no
/// back-reference of a valid frame reaches further than the bytes decoded so far, and we stop
/// at `cap`: a window of `max(cap, one block)` decodes every body we would accept. So a
/// larger declared window is lowered to that before the decoder sees the header (zstd's own
/// `ZSTD_d_windowLogMax` refuses instead; refusing would turn away the 2–8 MiB windows that
/// streaming compressors declare for small bodies). A frame that needs a dictionary is 415:
/// we have none.
fn zstd(body: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = body;
    let limit = (cap as u64).max(ZSTD_MAX_BLOCK);
    let mut decoder = ruzstd::decoding::FrameDecoder::new();
    if rest.is_empty() {
        return Err(DecodeError::Corrupt);
    }
    while !rest.is_empty() {
        let magic = u32::from_le_bytes(take::<4>(&mut rest)?);
        if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC {
            let len = u32::from_le_bytes(take::<4>(&mut rest)?) as usize;
            rest = rest.get(len..).ok_or(DecodeError::Corrupt)?;
            continue;
        }
        if magic != ZSTD_MAGIC {
            return Err(DecodeError::Corrupt);
        }
        let header = FrameHeader::parse(rest)?;
        if header.dictionary_id != 0 {
            return Err(DecodeError::Unsupported);
        }
        if let Some(size) = header.content_size {
            if out.len() as u64 + size > cap as u64 {
                return Err(DecodeError::TooLarge);
            }
        }
        // The header as the decoder will read it, with the window lowered if need be.
        let mut head = [0u8; 18];
        head[..4].copy_from_slice(&magic.to_le_bytes());
        head[4..4 + header.len].copy_from_slice(&rest[..header.len]);
        if let Some(at) = header.window_descriptor_at {
            if header.window > limit {
                head[4 + at] = window_descriptor(limit);
            }
        }
        rest = &rest[header.len..];
        let mut src = (&head[..4 + header.len]).chain(rest);
        let room = cap - out.len();
        // Reads the (possibly lowered) header again, then the blocks, as far as `room`.
        let frame = read_capped(
            ruzstd::decoding::StreamingDecoder::new_with_decoder(&mut src, &mut decoder)
                .map_err(|_| DecodeError::Corrupt)?,
            room,
        )?;
        if !decoder.is_finished() {
            return Err(DecodeError::Corrupt);
        }
        if let (Some(want), Some(got)) = (
            decoder.get_checksum_from_data(),
            decoder.get_calculated_checksum(),
        ) {
            if want != got {
                return Err(DecodeError::Corrupt);
            }
        }
        if header.content_size.is_some_and(|n| n != frame.len() as u64) {
            return Err(DecodeError::Corrupt);
        }
        out.extend_from_slice(&frame);
        rest = src.into_inner().1;
    }
    Ok(out)
}

/// The first `N` bytes of `rest`, which moves past them.
fn take<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    let (head, tail) = rest.split_first_chunk::<N>().ok_or(DecodeError::Corrupt)?;
    *rest = tail;
    Ok(*head)
}

/// What a zstd frame header (after the magic) says about memory and dictionaries.
#[derive(Debug)]
struct FrameHeader {
    /// Header length after the magic: descriptor, window, dictionary id, content size.
    len: usize,
    /// Where the window descriptor byte is (after the magic); none in single-segment frames,
    /// whose window is their content size.
    window_descriptor_at: Option<usize>,
    window: u64,
    dictionary_id: u32,
    content_size: Option<u64>,
}

impl FrameHeader {
    /// RFC 8878 §3.1.1.1.
    fn parse(b: &[u8]) -> Result<FrameHeader, DecodeError> {
        let fhd = *b.first().ok_or(DecodeError::Corrupt)?;
        let fcs_flag = fhd >> 6;
        let single_segment = fhd & 0x20 != 0;
        if fhd & 0x08 != 0 {
            // The reserved bit must be zero.
            return Err(DecodeError::Corrupt);
        }
        let dict_len = [0, 1, 2, 4][usize::from(fhd & 3)];
        let fcs_len = match fcs_flag {
            0 if single_segment => 1,
            0 => 0,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        let mut at = 1;
        let mut window = 0;
        let mut window_descriptor_at = None;
        if !single_segment {
            let wd = *b.get(at).ok_or(DecodeError::Corrupt)?;
            let exponent = u32::from(wd >> 3);
            let base = 1u64 << (10 + exponent);
            window = base + (base / 8) * u64::from(wd & 7);
            window_descriptor_at = Some(at);
            at += 1;
        }
        let le = |s: &[u8]| s.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x));
        let dict = b.get(at..at + dict_len).ok_or(DecodeError::Corrupt)?;
        let dictionary_id = le(dict) as u32;
        at += dict_len;
        let fcs = b.get(at..at + fcs_len).ok_or(DecodeError::Corrupt)?;
        let content_size = match fcs_len {
            0 => None,
            2 => Some(le(fcs) + 256),
            _ => Some(le(fcs)),
        };
        at += fcs_len;
        if single_segment {
            window = content_size.unwrap_or(0);
        }
        Ok(FrameHeader {
            len: at,
            window_descriptor_at,
            window,
            dictionary_id,
            content_size,
        })
    }
}

/// The smallest window descriptor (exponent only) whose window is at least `bytes`.
fn window_descriptor(bytes: u64) -> u8 {
    let log = 64 - (bytes.max(1024) - 1).leading_zeros();
    ((log - 10) as u8) << 3
}

fn read_capped(r: impl Read, cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    r.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Corrupt)?;
    if out.len() > cap {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn codings_by_name() {
        assert_eq!(coding(b"gzip"), Ok(Some(Coding::Gzip)));
        assert_eq!(coding(b" X-GZIP "), Ok(Some(Coding::Gzip)));
        assert_eq!(coding(b"identity"), Ok(None));
        assert_eq!(coding(b"zstd"), Ok(Some(Coding::Zstd)));
        assert_eq!(coding(b"br"), Err(DecodeError::Unsupported));
        assert_eq!(coding(b"gzip, zstd"), Err(DecodeError::Unsupported));
    }

    #[test]
    fn round_trips_and_caps() {
        let text = br#"{"event":"$pageview","props":{"k":"gz"}}"#.repeat(20);
        assert_eq!(decode(Coding::Gzip, &gzip(&text), 4096).unwrap(), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        assert_eq!(
            decode(Coding::Deflate, &z.finish().unwrap(), 4096).unwrap(),
            text
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        assert_eq!(
            decode(Coding::Deflate, &raw.finish().unwrap(), 4096).unwrap(),
            text
        );
        let zs = ruzstd::encoding::compress_to_vec(
            &text[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(decode(Coding::Zstd, &zs, 4096).unwrap(), text);
        // A bomb: 10 MB of zeros in ~10 KB; stops at the cap.
        let bomb = gzip(&vec![0u8; 10_000_000]);
        assert!(bomb.len() < 20_000);
        assert_eq!(
            decode(Coding::Gzip, &bomb, 65_536),
            Err(DecodeError::TooLarge)
        );
        assert_eq!(
            decode(Coding::Gzip, b"not gzip", 100),
            Err(DecodeError::Corrupt)
        );
        assert_eq!(
            decode(Coding::Zstd, b"not zstd", 100),
            Err(DecodeError::Corrupt)
        );
    }

    /// Bytes allocated and not yet freed by this thread, and the most it reached: the zstd
    /// tests measure what a hostile frame makes the decoder hold.
    mod peak {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static NOW: Cell<isize> = const { Cell::new(0) };
            static PEAK: Cell<isize> = const { Cell::new(0) };
        }

        struct Counting;

        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, l: Layout) -> *mut u8 {
                let p = unsafe { System.alloc(l) };
                let _ = NOW.try_with(|n| {
                    n.set(n.get() + l.size() as isize);
                    let _ = PEAK.try_with(|p| p.set(p.get().max(n.get())));
                });
                p
            }
            unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
                let _ = NOW.try_with(|n| n.set(n.get() - l.size() as isize));
                unsafe { System.dealloc(p, l) }
            }
        }

        #[global_allocator]
        static A: Counting = Counting;

        /// The most `f` had allocated at once on this thread, above what was held before.
        pub(crate) fn of<T>(f: impl FnOnce() -> T) -> (T, usize) {
            let base = NOW.with(|n| n.get());
            PEAK.with(|p| p.set(base));
            let out = f();
            (out, (PEAK.with(|p| p.get()) - base).max(0) as usize)
        }
    }

    /// A zstd frame header: magic, descriptor (no checksum, no dictionary, no content size),
    /// window descriptor `wd`.
    fn zstd_header(wd: u8) -> Vec<u8> {
        let mut v = 0xFD2F_B528u32.to_le_bytes().to_vec();
        v.extend_from_slice(&[0x00, wd]);
        v
    }

    /// A raw block (RFC 8878 §3.1.1.2) of `data`, the frame's last if `last`.
    fn raw_block(data: &[u8], last: bool) -> Vec<u8> {
        let h = ((data.len() as u32) << 3) | u32::from(last);
        let mut v = h.to_le_bytes()[..3].to_vec();
        v.extend_from_slice(data);
        v
    }

    /// Window bombs: a frame declaring a 128 MiB (or 3.75 TB) window made the decoder reserve
    /// it; with 16,000 RLE blocks of 128 KiB (64 KB on the wire, the reported one) it held
    /// ~2 GB. Decoded now with a window of the cap, holding well under a megabyte.
    #[test]
    fn zstd_window_bomb_costs_the_cap_not_the_window() {
        for wd in [0x88u8, 0xff] {
            let mut bomb = zstd_header(wd);
            for i in 0..16_000 {
                bomb.extend(raw_block(b"", i == 15_999));
            }
            assert!(bomb.len() < 65_536);
            let (out, held) = peak::of(|| decode(Coding::Zstd, &bomb, 65_536));
            assert_eq!(out, Ok(Vec::new()));
            assert!(held < 1 << 20, "window {wd:#x}: held {held} bytes");
        }
        // The issue's reproduction: the same blocks as RLE blocks of 128 KiB (2 GB decoded).
        let mut bomb = zstd_header(0x88);
        for i in 0..16_000u32 {
            let h = (131_072 << 3) | 2 | u32::from(i == 15_999);
            bomb.extend_from_slice(&h.to_le_bytes()[..3]);
            bomb.push(0);
        }
        let (out, held) = peak::of(|| decode(Coding::Zstd, &bomb, 65_536));
        assert_eq!(out, Err(DecodeError::TooLarge));
        assert!(held < 1 << 20, "RLE bomb: held {held} bytes");
        // The window is lowered, not ignored: data and a back-reference still decode.
        let text = b"abcdefgh".repeat(2000);
        let mut frame = ruzstd::encoding::compress_to_vec(
            &text[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let h = FrameHeader::parse(&frame[4..]).unwrap();
        if let Some(at) = h.window_descriptor_at {
            frame[4 + at] = 0xf0; // 2^40: a terabyte
        }
        let (out, held) = peak::of(|| decode(Coding::Zstd, &frame, 65_536));
        assert_eq!(out.unwrap(), text);
        assert!(held < 1 << 20, "held {held} bytes");
    }

    /// Declared sizes past the cap are refused before decoding; a declared size the frame
    /// does not match is corrupt; a frame needing a dictionary is unsupported (415).
    #[test]
    fn zstd_sizes_and_dictionaries() {
        // Single segment, 4-byte content size 1 MiB: over a 64 KiB cap.
        let mut big = 0xFD2F_B528u32.to_le_bytes().to_vec();
        big.push(0xA0);
        big.extend_from_slice(&(1u32 << 20).to_le_bytes());
        big.extend(raw_block(b"x", true));
        assert_eq!(
            decode(Coding::Zstd, &big, 65_536),
            Err(DecodeError::TooLarge)
        );
        // Declares 5 bytes, holds 1.
        let mut liar = 0xFD2F_B528u32.to_le_bytes().to_vec();
        liar.extend_from_slice(&[0x20, 5]);
        liar.extend(raw_block(b"x", true));
        assert_eq!(
            decode(Coding::Zstd, &liar, 65_536),
            Err(DecodeError::Corrupt)
        );
        // Dictionary id 7.
        let mut dict = 0xFD2F_B528u32.to_le_bytes().to_vec();
        dict.extend_from_slice(&[0x01, 0x50, 7]);
        dict.extend(raw_block(b"x", true));
        assert_eq!(
            decode(Coding::Zstd, &dict, 65_536),
            Err(DecodeError::Unsupported)
        );
        // Many tiny blocks adding up past the cap: 413 at the cap.
        let mut tiny = zstd_header(0x50);
        for i in 0..30_000 {
            tiny.extend(raw_block(b"ab", i == 29_999));
        }
        assert_eq!(
            decode(Coding::Zstd, &tiny, 32_768),
            Err(DecodeError::TooLarge)
        );
    }

    /// Every member and frame is decoded; skippable frames are skipped; anything after the
    /// coded data is corrupt, never silently dropped.
    #[test]
    fn whole_bodies_or_none() {
        let z = |b: &[u8]| {
            ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
        };
        let mut two = gzip(b"first ");
        two.extend(gzip(b"second"));
        assert_eq!(decode(Coding::Gzip, &two, 100).unwrap(), b"first second");
        let mut junk = gzip(b"first");
        junk.extend_from_slice(b"trailing");
        assert_eq!(decode(Coding::Gzip, &junk, 100), Err(DecodeError::Corrupt));

        let mut frames = z(b"one ");
        frames.extend_from_slice(&0x184D_2A53u32.to_le_bytes());
        frames.extend_from_slice(&3u32.to_le_bytes());
        frames.extend_from_slice(b"skp");
        frames.extend(z(b"two"));
        assert_eq!(decode(Coding::Zstd, &frames, 100).unwrap(), b"one two");
        let mut junk = z(b"one");
        junk.extend_from_slice(b"x");
        assert_eq!(decode(Coding::Zstd, &junk, 100), Err(DecodeError::Corrupt));
        let mut cut = z(b"one two three");
        cut.pop();
        assert_eq!(decode(Coding::Zstd, &cut, 100), Err(DecodeError::Corrupt));
        // A skippable frame claiming more than is there.
        let mut short = 0x184D_2A50u32.to_le_bytes().to_vec();
        short.extend_from_slice(&100u32.to_le_bytes());
        assert_eq!(decode(Coding::Zstd, &short, 100), Err(DecodeError::Corrupt));
        // Two frames over the cap together.
        let mut pair = z(&[b'a'; 60]);
        pair.extend(z(&[b'b'; 60]));
        assert_eq!(decode(Coding::Zstd, &pair, 100), Err(DecodeError::TooLarge));

        for enc in [
            Box::new(|b: &[u8]| {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(b).unwrap();
                e.finish().unwrap()
            }) as Box<dyn Fn(&[u8]) -> Vec<u8>>,
            Box::new(|b: &[u8]| {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(b).unwrap();
                e.finish().unwrap()
            }),
        ] {
            let mut body = enc(b"deflated");
            assert_eq!(decode(Coding::Deflate, &body, 100).unwrap(), b"deflated");
            body.extend_from_slice(b"more");
            assert_eq!(
                decode(Coding::Deflate, &body, 100),
                Err(DecodeError::Corrupt)
            );
        }
        // The gzip and deflate bombs stay bounded by the cap.
        let bomb = gzip(&vec![0u8; 10_000_000]);
        let (out, held) = peak::of(|| decode(Coding::Gzip, &bomb, 65_536));
        assert_eq!(out, Err(DecodeError::TooLarge));
        assert!(held < 1 << 20, "held {held} bytes");
    }
}
