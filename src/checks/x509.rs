//! The one field of an X.509 certificate healthgate reads itself: `notAfter`. The chain is
//! verified by rustls/webpki, which does not expose validity dates; a full X.509 crate would be
//! several new dependencies for one date. The certificate comes from the network, so every read
//! is bounds-checked and any surprise is an error, never a panic.

use chrono::NaiveDate;

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xA0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable certificate: {0}")]
pub struct CertError(&'static str);

/// `notAfter` of a DER certificate, in Unix seconds.
pub fn not_after(der: &[u8]) -> Result<i64, CertError> {
    let (certificate, _) = expect(der, SEQUENCE, "not a SEQUENCE")?;
    let (tbs, _) = expect(certificate, SEQUENCE, "no tbsCertificate")?;
    let mut rest = tbs;
    if rest.first() == Some(&VERSION) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer: skipped whatever they hold.
    for _ in 0..3 {
        rest = tlv(rest)?.2;
    }
    let (validity, _) = expect(rest, SEQUENCE, "no validity")?;
    let (_, _, after_not_before) = tlv(validity)?;
    let (tag, value, _) = tlv(after_not_before)?;
    time(tag, value)
}

fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), CertError> {
    match tlv(input)? {
        (t, value, rest) if t == tag => Ok((value, rest)),
        _ => Err(CertError(what)),
    }
}

/// One tag-length-value: (tag, value, what follows). Definite lengths only, as DER requires.
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), CertError> {
    let (&tag, rest) = input.split_first().ok_or(CertError("truncated"))?;
    let (&first, mut rest) = rest.split_first().ok_or(CertError("truncated"))?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 {
            return Err(CertError("unsupported length"));
        }
        let bytes = rest.get(..count).ok_or(CertError("truncated"))?;
        rest = &rest[count..];
        bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
    };
    if rest.len() < length {
        return Err(CertError("truncated"));
    }
    let (value, rest) = rest.split_at(length);
    Ok((tag, value, rest))
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950-2049, RFC 5280) or GeneralizedTime `YYYYMMDDHHMMSSZ`.
fn time(tag: u8, value: &[u8]) -> Result<i64, CertError> {
    let text = std::str::from_utf8(value).map_err(|_| CertError("time is not text"))?;
    let digits = text
        .strip_suffix('Z')
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .ok_or(CertError("time is not in UTC"))?;
    let (year, rest) = match (tag, digits.len()) {
        (UTC_TIME, 12) => {
            let yy: i32 = digits[..2].parse().expect("two digits");
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (GENERALIZED_TIME, 14) => (digits[..4].parse().expect("four digits"), &digits[4..]),
        _ => return Err(CertError("unsupported time format")),
    };
    let field = |i: usize| -> u32 { rest[i..i + 2].parse().expect("two digits") };
    NaiveDate::from_ymd_opt(year, field(0), field(2))
        .and_then(|date| date.and_hms_opt(field(4), field(6), field(8)))
        .map(|time| time.and_utc().timestamp())
        .ok_or(CertError("invalid date"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal certificate shell: only the fields `not_after` walks, with real encodings.
    fn certificate(not_after: (u8, &str)) -> Vec<u8> {
        fn wrap(tag: u8, value: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            if value.len() < 0x80 {
                out.push(value.len() as u8);
            } else {
                out.extend([0x82, (value.len() >> 8) as u8, value.len() as u8]);
            }
            out.extend_from_slice(value);
            out
        }
        let validity = [
            wrap(UTC_TIME, b"250101000000Z"),
            wrap(not_after.0, not_after.1.as_bytes()),
        ]
        .concat();
        let tbs = [
            wrap(VERSION, &wrap(0x02, &[2])),
            wrap(0x02, &[0x01, 0x02, 0x03]),
            wrap(SEQUENCE, &[0x06, 0x01, 0x2A]),
            // A long issuer, so the long length form is read too.
            wrap(SEQUENCE, &[0x05; 300]),
            wrap(SEQUENCE, &validity),
        ]
        .concat();
        wrap(SEQUENCE, &wrap(SEQUENCE, &tbs))
    }

    #[test]
    fn reads_both_time_forms() {
        let cases: &[(u8, &str, i64)] = &[
            (UTC_TIME, "270303120000Z", 1_804_075_200),
            (UTC_TIME, "491231235959Z", 2_524_607_999),
            (UTC_TIME, "500101000000Z", -631_152_000),
            (GENERALIZED_TIME, "20270303120000Z", 1_804_075_200),
            (GENERALIZED_TIME, "99991231235959Z", 253_402_300_799),
        ];
        for (tag, text, expected) in cases {
            assert_eq!(
                not_after(&certificate((*tag, text))),
                Ok(*expected),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let cases: &[(Vec<u8>, &str)] = &[
            (vec![], "truncated"),
            (vec![0x30], "truncated"),
            (vec![0x30, 0x05, 0x30], "truncated"),
            (vec![0x04, 0x00], "not a SEQUENCE"),
            (vec![0x30, 0x80, 0x00, 0x00], "unsupported length"),
            (
                certificate((UTC_TIME, "2703031200Z")),
                "unsupported time format",
            ),
            (
                certificate((UTC_TIME, "270303120000+0100")),
                "time is not in UTC",
            ),
            (certificate((UTC_TIME, "271303120000Z")), "invalid date"),
            (
                certificate((0x04, "270303120000Z")),
                "unsupported time format",
            ),
        ];
        for (der, expected) in cases {
            assert_eq!(not_after(der), Err(CertError(expected)), "{der:02x?}");
        }
    }
}
