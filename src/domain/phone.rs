//! Phone numbers, the one place they are read: GHL's recipients, WhatsApp's JIDs, the simulated
//! transport and the admin API all go through [`Phone`]. Numbers are checked against
//! libphonenumber's numbering plan (the `phonenumber` crate), never against rules of our own: a
//! number sent to the wrong person is the worst thing this bridge can do, so whatever cannot be
//! read with certainty is refused, with the reason.

use std::fmt;

use phonenumber::metadata::DATABASE;
use phonenumber::{Mode, country};

/// A phone number in E.164: `+` and the digits, e.g. `+447911123456`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Phone(String);

/// The country whose numbering plan reads numbers written without their country code
/// (`WAGHL_DEFAULT_COUNTRY`): its trunk prefix (`0`, `1`…) and international prefix (`011`,
/// `00`…).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region(country::Id);

impl Region {
    /// An ISO 3166 code (`US`, `gb`) of a country the numbering plan knows.
    pub fn parse(iso: &str) -> Option<Self> {
        let id: country::Id = iso.trim().to_ascii_uppercase().parse().ok()?;
        DATABASE.by_id(id.as_ref()).is_some().then_some(Self(id))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref())
    }
}

/// Why a number was refused; its text is what GHL and the admin see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a valid phone number")]
pub struct InvalidPhone {
    /// The input, escaped and shortened: it may come from anyone.
    shown: String,
}

impl InvalidPhone {
    fn of(input: &str) -> Self {
        Self {
            shown: super::clip(input).to_string(),
        }
    }
}

/// Longer input is not a phone number, however it is formatted.
const MAX_INPUT_CHARS: usize = 64;

impl Phone {
    /// A number as GHL and people write it — `+44 (0) 7911 123456`, `(415) 555-2671`,
    /// `011 44 7911 123456`, `tel:+1…`, full-width digits, an `ext. 89` (dropped) — read in
    /// `region` when it has no country code. Only a number that is valid in its country's
    /// numbering plan is accepted.
    pub fn parse(text: &str, region: Region) -> Result<Self, InvalidPhone> {
        let cleaned = clean(text).ok_or_else(|| InvalidPhone::of(text))?;
        // A number with `+` is read in its own country's plan, anything else in the region's.
        let plan = (!cleaned.starts_with('+')).then_some(region.0);
        let in_plan = || {
            phonenumber::parse(plan, &cleaned)
                .ok()
                .filter(|n| n.extension().is_none() && phonenumber::is_valid(n))
                .map(|n| Self(n.format().mode(Mode::E164).to_string()))
        };
        cleaned
            .strip_prefix('+')
            .and_then(Self::valid_as_written)
            // National numbers, the region's international prefix (`011…`), and a trunk
            // prefix written after the country code (`+44 0…`).
            .or_else(in_plan)
            // `00` is the international prefix of most of the world, and people write it
            // where it is not (the US dials `011`); it is read so only when the number is
            // invalid in the region's own plan, so no valid reading is overridden.
            .or_else(|| cleaned.strip_prefix("00").and_then(Self::valid_as_written))
            .ok_or_else(|| InvalidPhone::of(text))
    }

    /// `digits` (country code first) when they are, digit for digit, a valid number of a
    /// country with that code. (The crate also strips what it takes for a carrier code from
    /// international numbers, which loses the area code of `+55 11 9…`: asking each country
    /// of the code with the national part avoids that, and the comparison rules out any
    /// digit added or dropped.)
    fn valid_as_written(digits: &str) -> Option<Self> {
        let code = calling_code(digits)?;
        let national = &digits[code.to_string().len()..];
        let e164 = format!("+{digits}");
        DATABASE
            .region(&code)?
            .iter()
            .filter_map(|region| region.parse::<country::Id>().ok())
            .filter_map(|region| phonenumber::parse(Some(region), national).ok())
            .any(|n| phonenumber::is_valid(&n) && n.format().mode(Mode::E164).to_string() == e164)
            .then_some(Self(e164))
    }

    /// A number that carries its country code: from WhatsApp itself (JIDs), the simulated
    /// transport and the admin API. WhatsApp is the authority on which numbers exist, so only
    /// the form is checked here — a known calling code and an E.164 length — not the ranges.
    pub fn parse_international(text: &str) -> Result<Self, InvalidPhone> {
        let invalid = || InvalidPhone::of(text);
        let cleaned = clean(text).ok_or_else(invalid)?;
        let digits = cleaned.strip_prefix('+').ok_or_else(invalid)?;
        Self::from_whatsapp_user(digits).ok_or_else(invalid)
    }

    /// The phone of a WhatsApp user part (`15551234567` of `15551234567@s.whatsapp.net`).
    pub fn from_whatsapp_user(digits: &str) -> Option<Self> {
        let well_formed = (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        (well_formed && calling_code(digits).is_some()).then(|| Self(format!("+{digits}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The digits, as WhatsApp's JIDs carry them.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The country calling code `digits` start with (codes are prefix-free: at most one matches).
fn calling_code(digits: &str) -> Option<u16> {
    (1..=3)
        .filter_map(|len| digits.get(..len)?.parse().ok())
        .find(|code| DATABASE.region(code).is_some())
}

/// The number without the decoration people and apps add: `+` (only first) and ASCII digits,
/// or `None` when something is left that is not formatting (letters, a second `+`, symbols).
fn clean(text: &str) -> Option<String> {
    if text.chars().count() > MAX_INPUT_CHARS {
        return None;
    }
    let mapped: String = text.chars().filter(|c| !is_invisible(*c)).map(narrow).collect();
    let mut rest = mapped.trim();
    // A leading ☎ or 📞, then a URI scheme: `tel:+44…`, `whatsapp:+44…`.
    loop {
        rest = rest.trim_start_matches(|c: char| !(c.is_alphanumeric() || c == '+' || c == '('));
        let lower = rest.to_ascii_lowercase();
        match ["tel:", "whatsapp:"].iter().find(|p| lower.starts_with(*p)) {
            Some(scheme) => rest = &rest[scheme.len()..],
            None => break,
        }
    }
    let number = without_extension(rest.trim_end());
    let international = number.starts_with('+');
    // `+44 (0) 20…`: the bracketed trunk prefix is not dialled from abroad.
    let number = if international {
        number.replacen("(0)", "", 1)
    } else {
        number.to_owned()
    };
    let mut out = String::with_capacity(number.len());
    for (i, c) in number.chars().enumerate() {
        match c {
            '+' if i == 0 => out.push('+'),
            '0'..='9' => out.push(c),
            c if is_separator(c) => {}
            _ => return None,
        }
    }
    out.bytes().any(|b| b.is_ascii_digit()).then_some(out)
}

/// The number before an extension (`ext. 89`, `x89`, `#89`, `;ext=89`), which WhatsApp cannot
/// dial; the number itself is unchanged. Anything else after the digits stays, to be refused.
fn without_extension(text: &str) -> &str {
    let lower = text.to_ascii_lowercase();
    for marker in [";ext=", "extension", "ext.", "ext", "x", "#"] {
        if let Some(at) = lower.rfind(marker) {
            let tail = lower[at + marker.len()..].trim_start_matches([' ', '.', ':']);
            let number = text[..at].trim_end_matches([' ', ',', ';']);
            if (1..=7).contains(&tail.len())
                && tail.bytes().all(|b| b.is_ascii_digit())
                && number.ends_with(|c: char| c.is_ascii_digit())
            {
                return number;
            }
        }
    }
    text
}

/// Characters that carry no meaning in a number: bidi controls, zero-width marks, BOM.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{00AD}')
}

/// Full-width and Arabic-Indic digits and the full-width plus, as ASCII.
fn narrow(c: char) -> char {
    let digit = |base: char| char::from(b'0' + (c as u32 - base as u32) as u8);
    match c {
        '\u{FF10}'..='\u{FF19}' => digit('\u{FF10}'),
        '\u{0660}'..='\u{0669}' => digit('\u{0660}'),
        '\u{06F0}'..='\u{06F9}' => digit('\u{06F0}'),
        '\u{FF0B}' => '+',
        other => other,
    }
}

fn is_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '-' | '.' | '(' | ')' | '/' | '\u{00A0}' | '\u{2010}'
            ..='\u{2015}' | '\u{2212}' | '\u{3000}' | '\u{FF0D}' | '\u{FF08}' | '\u{FF09}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us() -> Region {
        Region::parse("US").unwrap()
    }

    #[test]
    fn regions_are_iso_codes_the_numbering_plan_knows() {
        assert_eq!(Region::parse("gb").unwrap().to_string(), "GB");
        assert!(Region::parse("XX").is_none());
        assert!(Region::parse("").is_none());
    }

    #[test]
    fn numbers_with_a_country_code_keep_it() {
        assert_eq!(
            Phone::parse("+1 (415) 555-2671", us()).unwrap().as_str(),
            "+14155552671"
        );
        assert_eq!(
            Phone::parse("+44 (0) 7911 123456", us()).unwrap().as_str(),
            "+447911123456"
        );
        assert_eq!(
            Phone::parse("011 44 7911 123456", us()).unwrap().as_str(),
            "+447911123456"
        );
        assert_eq!(
            Phone::parse("0044 7911 123456", us()).unwrap().as_str(),
            "+447911123456"
        );
        assert_eq!(
            Phone::parse("+55 11 91234-5678", us()).unwrap().as_str(),
            "+5511912345678"
        );
        assert_eq!(
            Phone::parse("+44 07911 123456", us()).unwrap().as_str(),
            "+447911123456"
        );
    }

    #[test]
    fn national_numbers_take_the_region() {
        let gb = Region::parse("GB").unwrap();
        assert_eq!(Phone::parse("(415) 555-2671", us()).unwrap().as_str(), "+14155552671");
        assert_eq!(Phone::parse("1 415 555 2671", us()).unwrap().as_str(), "+14155552671");
        assert_eq!(Phone::parse("07911 123456", gb).unwrap().as_str(), "+447911123456");
        assert_eq!(Phone::parse("00 1 415 555 2671", gb).unwrap().as_str(), "+14155552671");
    }

    #[test]
    fn decoration_is_removed_and_extensions_dropped() {
        for written in [
            "\u{200F}+447911123456",
            "\u{202A}+447911123456\u{202C}",
            "📞 +447911123456",
            "tel:+447911123456",
            "whatsapp:+447911123456",
            "＋４４７９１１１２３４５６",
            "+44 7911 1234５６",
            "+44 7911 123456 ext. 89",
            "+44 7911 123456 x89",
            "+44 7911 123456;ext=89",
        ] {
            assert_eq!(
                Phone::parse(written, us()).unwrap().as_str(),
                "+447911123456",
                "{written:?}"
            );
        }
    }

    #[test]
    fn anything_uncertain_is_refused_with_the_reason() {
        for written in [
            "+1555abc1234",
            "555123",
            "+1 (555) 123-4567",
            "+44+7911123456",
            "12",
            "",
            "call me",
            &"1".repeat(80),
        ] {
            let err = Phone::parse(written, us()).unwrap_err();
            assert!(
                err.to_string().ends_with("is not a valid phone number"),
                "{written:?}: {err}"
            );
        }
    }

    #[test]
    fn the_reason_escapes_and_shortens_the_input() {
        let err = Phone::parse(&format!("x\n{}", "9".repeat(60)), us()).unwrap_err();
        let text = err.to_string();
        assert!(
            !text.contains('\n') && text.contains("\\n") && text.len() < 120,
            "{text}"
        );
    }

    #[test]
    fn international_numbers_need_a_plus_and_a_known_calling_code() {
        assert_eq!(
            Phone::parse_international("+1 555 123 4567").unwrap().as_str(),
            "+15551234567"
        );
        assert!(Phone::parse_international("5551234567").is_err());
        assert!(Phone::parse_international("+999 1234 5678").is_err());
        assert!(Phone::parse_international("+1234").is_err());
        assert_eq!(
            Phone::from_whatsapp_user("5511912345678").unwrap().digits(),
            "5511912345678"
        );
        assert!(Phone::from_whatsapp_user("abc").is_none());
    }
}
