//! Certificate dates: read from the DER of a certificate webpki will not check itself, and
//! written as UTC for error texts.

use rustls::pki_types::UnixTime;

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let mut l = 0usize;
        for &b in &rest[..n] {
            l = (l << 8) | b as usize;
        }
        rest = &rest[n..];
        l
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// notBefore and notAfter (Unix seconds) of an X.509 certificate.
pub(super) fn validity(cert: &[u8]) -> Option<(u64, u64)> {
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der(cert)? else {
        return None;
    };
    let (mut tag, _, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        // [0] version, then the serial number.
        (tag, _, rest) = der(rest)?;
    }
    if tag != 0x02 {
        return None;
    }
    // Signature algorithm, issuer, then validity.
    let (_, _, rest) = der(rest)?;
    let (_, _, rest) = der(rest)?;
    let (0x30, val, _) = der(rest)? else {
        return None;
    };
    let (t1, nb, rest) = der(val)?;
    let (t2, na, _) = der(rest)?;
    Some((der_time(t1, nb)?, der_time(t2, na)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in Unix seconds. The bytes
/// come from a certificate file anyone may have written: anything but ASCII digits in the right
/// places, or a field out of its range, is None.
pub(super) fn der_time(tag: u8, s: &[u8]) -> Option<u64> {
    let digits = s.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // The number in `digits[i..i + n]`, all ASCII digits (checked above).
    let num = |i: usize, n: usize| {
        digits[i..i + n]
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
    };
    let (year, at) = match (tag, digits.len()) {
        (0x17, 12) => {
            let y = num(0, 2);
            (if y < 50 { 2000 + y } else { 1900 + y }, 2)
        }
        (0x18, 14) => (num(0, 4), 4),
        _ => return None,
    };
    let (m, d) = (num(at, 2), num(at + 2, 2));
    let (hh, mm, ss) = (num(at + 4, 2), num(at + 6, 2), num(at + 8, 2));
    // Seconds up to 60: a leap second.
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// `YYYY-MM-DD hh:mm:ss UTC` for a certificate date.
pub(super) fn utc(t: UnixTime) -> String {
    let secs = t.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
