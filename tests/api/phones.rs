//! Phone numbers as GHL and people write them, through a real provider webhook: each one is
//! either sent to the one number it means or failed in GHL with the reason — never sent to
//! anyone else (the default country is the US).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::outbound::bench;

const UK: &str = "+447911123456";
const US: &str = "+14155552671";

/// `(as written, the number it must reach or None: refused)`.
const FORMATS: &[(&str, Option<&str>)] = &[
    ("+447911123456", Some(UK)),
    ("+44 7911 123456", Some(UK)),
    ("+44 (0) 7911 123456", Some(UK)),
    ("+44 (0)7911 123456", Some(UK)),
    ("+44 07911 123456", Some(UK)),
    ("+44-7911-123456", Some(UK)),
    ("+44.7911.123456", Some(UK)),
    ("+44\u{a0}7911\u{a0}123456", Some(UK)),
    ("+44\u{2013}7911\u{2013}123456", Some(UK)),
    (" +44 7911 123456 ", Some(UK)),
    ("011 44 7911 123456", Some(UK)),
    ("01144 7911 123456", Some(UK)),
    ("0044 7911 123456", Some(UK)),
    ("00447911123456", Some(UK)),
    ("\u{200f}+447911123456", Some(UK)),
    ("\u{202a}+447911123456\u{202c}", Some(UK)),
    ("\u{200b}+44 7911 123456", Some(UK)),
    ("\u{feff}+447911123456", Some(UK)),
    ("+44 7911\u{200d}123456", Some(UK)),
    ("📞 +447911123456", Some(UK)),
    ("☎ +44 7911 123456", Some(UK)),
    ("tel:+447911123456", Some(UK)),
    ("TEL:+44-7911-123456", Some(UK)),
    ("whatsapp:+447911123456", Some(UK)),
    ("＋447911123456", Some(UK)),
    ("＋４４７９１１１２３４５６", Some(UK)),
    ("+44 7911 12345６", Some(UK)),
    ("+44 7911 123456 ext. 89", Some(UK)),
    ("+44 7911 123456 ext 89", Some(UK)),
    ("+44 7911 123456 x89", Some(UK)),
    ("+44 7911 123456;ext=89", Some(UK)),
    ("+44 7911 123456 #89", Some(UK)),
    ("+1 (415) 555-2671", Some(US)),
    ("+14155552671", Some(US)),
    ("(415) 555-2671", Some(US)),
    ("415-555-2671", Some(US)),
    ("415.555.2671", Some(US)),
    ("4155552671", Some(US)),
    ("1 415 555 2671", Some(US)),
    ("1-415-555-2671", Some(US)),
    ("+1/415/555/2671", Some(US)),
    ("tel:+1-415-555-2671", Some(US)),
    ("+1 415 555 2671 ext. 12", Some(US)),
    ("(415) 555-2671 x12", Some(US)),
    ("٤١٥٥٥٥٢٦٧١", Some(US)),
    ("+55 11 91234-5678", Some("+5511912345678")),
    ("+49 1512 3456789", Some("+4915123456789")),
    ("+33 6 12 34 56 78", Some("+33612345678")),
    ("+91 98765 43210", Some("+919876543210")),
    ("+1555abc1234", None),
    ("+1 (555) 123-4567", None),
    ("(555) 123-4567", None),
    ("555123", None),
    ("+44 7911 1234", None),
    ("+44 7911 1234567", None),
    ("+44+7911123456", None),
    ("44 7911 123456", None),
    ("call +447911123456", None),
    ("+447911123456 or +447911654321", None),
    ("+44 7911 123456 ext. abc", None),
    ("1-800-FLOWERS", None),
    ("７", None),
    ("+999 1234 5678", None),
    ("+", None),
];

#[tokio::test]
async fn every_format_reaches_the_one_number_it_means_or_fails_in_ghl_with_the_reason() {
    let b = bench(&[]).await;
    b.paired("locPhones", "+15551000064").await;
    for (i, (written, _)) in FORMATS.iter().enumerate() {
        let body = json!({
            "contactId": "ct-1", "locationId": "locPhones", "messageId": format!("ph-{i}"),
            "type": "SMS", "phone": written, "message": format!("format {i}"),
        });
        assert_eq!(b.provider_webhook(body).await.status(), 200, "{written:?}");
    }
    let outcomes = wait_for_outcomes(&b.fake).await;
    let sent: HashMap<String, String> = b
        .sent("locPhones")
        .await
        .iter()
        .map(|m| {
            (
                m["text"].as_str().unwrap().to_owned(),
                m["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (i, (written, expected)) in FORMATS.iter().enumerate() {
        let to = sent.get(&format!("format {i}"));
        match expected {
            Some(number) => assert_eq!(to.map(String::as_str), Some(*number), "{written:?}: {:?}", outcomes[i]),
            None => {
                assert_eq!(to, None, "{written:?} was sent");
                let reason = outcomes[i]["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    reason.ends_with("is not a valid phone number"),
                    "{written:?}: {}",
                    outcomes[i]
                );
            }
        }
    }
}

/// The last status GHL got for each message, once each is `sent` or `failed`.
async fn wait_for_outcomes(fake: &fake_ghl::FakeGhl) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last: Vec<Value> = (0..FORMATS.len())
            .map(|i| fake.statuses(&format!("ph-{i}")).last().cloned().unwrap_or(Value::Null))
            .collect();
        if last.iter().all(|s| s["status"] == "sent" || s["status"] == "failed") {
            return last;
        }
        assert!(Instant::now() < deadline, "not every message finished: {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
