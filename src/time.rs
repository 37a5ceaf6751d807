//! UTC timestamp formatting without a date-time dependency: RFC 3339 for records and logs,
//! IMF-fixdate for HTTP `Date` headers, compact stamps for file names; one calendar algorithm.

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for microseconds since the Unix epoch.
pub fn rfc3339_micros(us: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(us / 1_000_000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
        us % 1_000_000
    )
}

/// Appends `YYYY-MM-DDTHH:MM:SS.ffffffZ` to `out` without allocating: the date and time of
/// day are formatted once per second per thread, the microseconds every time.
pub(crate) fn write_rfc3339_micros(us: u64, out: &mut Vec<u8>) {
    thread_local! {
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let secs = us / 1_000_000;
    let mut cached = SECOND.get();
    if cached.0 != secs {
        let (y, mo, d, h, mi, s) = civil(secs);
        let mut b = [0u8; 19];
        let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
        if text.len() == 19 {
            b.copy_from_slice(text.as_bytes());
            cached = (secs, b);
            SECOND.set(cached);
        } else {
            // A year past 9999 or before 0: not worth a cache.
            out.extend_from_slice(rfc3339_micros(us).as_bytes());
            return;
        }
    }
    out.extend_from_slice(&cached.1);
    out.push(b'.');
    let mut f = us % 1_000_000;
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (f % 10) as u8;
        f /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// `YYYYMMDDTHHMMSSZ`, for file names.
pub(crate) fn compact_seconds(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Seconds since the epoch to (year, month, day, hour, minute, second), proleptic Gregorian.
/// Howard Hinnant's `civil_from_days`.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

/// `Date` header values (IMF-fixdate), formatted at most once a second.
pub(crate) struct DateCache {
    secs: u64,
    text: [u8; 29],
}

impl Default for DateCache {
    fn default() -> Self {
        Self {
            secs: u64::MAX,
            text: [b' '; 29],
        }
    }
}

impl DateCache {
    /// The date now.
    pub(crate) fn get(&mut self) -> &[u8; 29] {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now != self.secs {
            self.secs = now;
            self.text = imf_fixdate(now);
        }
        &self.text
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let (y, m, d, hh, mm, ss) = civil(secs);
    let mut out = [0u8; 29];
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[3..5].copy_from_slice(b", ");
    two(&mut out[5..7], d);
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(m - 1) as usize]);
    out[11] = b' ';
    let y = y as u32;
    two(&mut out[12..14], y / 100);
    two(&mut out[14..16], y % 100);
    out[16] = b' ';
    two(&mut out[17..19], hh);
    out[19] = b':';
    two(&mut out[20..22], mm);
    out[22] = b':';
    two(&mut out[23..25], ss);
    out[25..29].copy_from_slice(b" GMT");
    out
}

fn two(out: &mut [u8], v: u32) {
    out[0] = b'0' + (v / 10 % 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(compact_seconds(1_798_761_599), "20261231T235959Z");
    }

    #[test]
    fn the_cached_writer_matches_the_formatter() {
        for us in [
            0,
            951_782_400_000_001,
            951_782_400_999_999,
            951_782_401_000_000,
            1_798_761_599_123_456,
        ] {
            let mut out = Vec::new();
            write_rfc3339_micros(us, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), rfc3339_micros(us));
        }
    }

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_798_761_600),
            b"Fri, 01 Jan 2027 00:00:00 GMT"
        );
    }
}
