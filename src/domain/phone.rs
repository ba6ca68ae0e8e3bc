//! Phone numbers as GHL writes them, normalised to E.164 (`+` and 7–15 digits). Numbers
//! written without `+` are read in the location's default country (`WAGHL_DEFAULT_COUNTRY`).

/// Calling codes of the countries agencies most often serve; others must be written with `+`.
const CALLING_CODES: &[(&str, &str)] = &[
    ("US", "1"),
    ("CA", "1"),
    ("PR", "1"),
    ("DO", "1"),
    ("JM", "1"),
    ("MX", "52"),
    ("BR", "55"),
    ("AR", "54"),
    ("CL", "56"),
    ("CO", "57"),
    ("PE", "51"),
    ("VE", "58"),
    ("EC", "593"),
    ("UY", "598"),
    ("PY", "595"),
    ("BO", "591"),
    ("CR", "506"),
    ("PA", "507"),
    ("GT", "502"),
    ("SV", "503"),
    ("HN", "504"),
    ("NI", "505"),
    ("GB", "44"),
    ("IE", "353"),
    ("FR", "33"),
    ("DE", "49"),
    ("ES", "34"),
    ("PT", "351"),
    ("IT", "39"),
    ("NL", "31"),
    ("BE", "32"),
    ("CH", "41"),
    ("AT", "43"),
    ("SE", "46"),
    ("NO", "47"),
    ("DK", "45"),
    ("FI", "358"),
    ("PL", "48"),
    ("RO", "40"),
    ("GR", "30"),
    ("TR", "90"),
    ("IL", "972"),
    ("AE", "971"),
    ("SA", "966"),
    ("QA", "974"),
    ("KW", "965"),
    ("EG", "20"),
    ("MA", "212"),
    ("NG", "234"),
    ("GH", "233"),
    ("KE", "254"),
    ("ZA", "27"),
    ("IN", "91"),
    ("PK", "92"),
    ("BD", "880"),
    ("LK", "94"),
    ("PH", "63"),
    ("ID", "62"),
    ("MY", "60"),
    ("SG", "65"),
    ("TH", "66"),
    ("VN", "84"),
    ("AU", "61"),
    ("NZ", "64"),
    ("JP", "81"),
    ("KR", "82"),
    ("HK", "852"),
    ("TW", "886"),
    ("CN", "86"),
];

/// The calling code of an ISO 3166 country, when waghl knows it.
pub fn calling_code(country: &str) -> Option<&'static str> {
    CALLING_CODES
        .iter()
        .find(|(iso, _)| iso.eq_ignore_ascii_case(country))
        .map(|(_, code)| *code)
}

/// A number already written in E.164 (`+` and 7–15 digits, separators allowed), as `+digits`.
pub fn parse_e164(phone: &str) -> Result<String, String> {
    let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
    if phone.trim().starts_with('+') && (7..=15).contains(&digits.len()) {
        Ok(format!("+{digits}"))
    } else {
        Err(format!("{phone:?} is not an E.164 number (+ and 7–15 digits)"))
    }
}

/// `+15551234567` from `+1 (555) 123-4567`, `0044 20…`, or a national number such as
/// `(555) 123-4567` / `020 7946 0958` read in `default_country`.
pub fn normalize(phone: &str, default_country: &str) -> Result<String, String> {
    let trimmed = phone.trim();
    let digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    let international = if trimmed.starts_with('+') {
        digits
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_owned()
    } else {
        let code = calling_code(default_country)
            .ok_or_else(|| format!("{phone:?} has no country code and {default_country} is not a known country"))?;
        // NANP numbers are often written with their leading 1 but without `+`.
        if code == "1" && digits.len() == 11 && digits.starts_with('1') {
            digits
        } else {
            // National trunk prefix 0 (e.g. 020 … in the UK) is not part of the number.
            format!("{code}{}", digits.trim_start_matches('0'))
        }
    };
    if !(7..=15).contains(&international.len()) || international.starts_with('0') {
        return Err(format!("{phone:?} is not a valid phone number"));
    }
    Ok(format!("+{international}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_with_a_country_code_are_kept() {
        assert_eq!(normalize("+1 (555) 123-4567", "US").unwrap(), "+15551234567");
        assert_eq!(normalize("0044 20 7946 0958", "US").unwrap(), "+442079460958");
        assert_eq!(normalize("+55 11 91234-5678", "GB").unwrap(), "+5511912345678");
    }

    #[test]
    fn national_numbers_take_the_default_country() {
        assert_eq!(normalize("(555) 123-4567", "US").unwrap(), "+15551234567");
        assert_eq!(normalize("15551234567", "US").unwrap(), "+15551234567");
        assert_eq!(normalize("020 7946 0958", "GB").unwrap(), "+442079460958");
        assert_eq!(normalize("11 91234-5678", "br").unwrap(), "+5511912345678");
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        assert!(normalize("12", "US").unwrap_err().contains("not a valid"));
        assert!(normalize("+1234567890123456", "US").is_err());
        assert!(normalize("555 1234", "XX").unwrap_err().contains("XX"));
    }
}
