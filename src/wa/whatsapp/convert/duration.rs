//! How long an outbound audio or video file plays, read from its container: WhatsApp shows it
//! on the bubble, and a voice note without it does not render its length. Only the two
//! containers phones send are read — OGG (Opus or Vorbis: the last page's granule position
//! over the sample rate) and ISO MP4/M4A/MOV (the `mvhd` box's duration over its timescale);
//! for anything else the field is left out, as WhatsApp Web does when it cannot tell.

use crate::domain::MediaKind;

/// Whole seconds (rounded, at least 1 for a file that plays at all) of an audio or video file.
pub fn media_seconds(kind: MediaKind, bytes: &[u8]) -> Option<u32> {
    if !matches!(kind, MediaKind::Audio | MediaKind::Voice | MediaKind::Video) {
        return None;
    }
    let seconds = ogg_seconds(bytes).or_else(|| mp4_seconds(bytes))?;
    (seconds.is_finite() && seconds > 0.0 && seconds < f64::from(u32::MAX)).then(|| (seconds.round() as u32).max(1))
}

/// OGG: the granule position of the last page is the number of samples (Opus: at 48 kHz,
/// less the pre-skip of its header; Vorbis: at the rate of its identification header).
fn ogg_seconds(bytes: &[u8]) -> Option<f64> {
    if !bytes.starts_with(b"OggS") {
        return None;
    }
    // The first page's packet starts after its 27-byte header and segment table.
    let segments = usize::from(*bytes.get(26)?);
    let packet = bytes.get(27 + segments..)?;
    let (rate, skip) = if packet.starts_with(b"OpusHead") {
        (
            48_000.0,
            f64::from(u16::from_le_bytes(packet.get(10..12)?.try_into().ok()?)),
        )
    } else if packet.starts_with(b"\x01vorbis") {
        (f64::from(u32::from_le_bytes(packet.get(12..16)?.try_into().ok()?)), 0.0)
    } else {
        return None;
    };
    let last = bytes.windows(4).rposition(|w| w == b"OggS")?;
    let granule = u64::from_le_bytes(bytes.get(last + 6..last + 14)?.try_into().ok()?);
    // All ones: a page on which no packet ends.
    (granule != u64::MAX && rate > 0.0).then(|| (granule as f64 - skip).max(0.0) / rate)
}

/// ISO base media (MP4, M4A, MOV): `moov` → `mvhd`.
fn mp4_seconds(bytes: &[u8]) -> Option<f64> {
    let moov = find_box(bytes, b"moov")?;
    let mvhd = find_box(moov, b"mvhd")?;
    let (timescale, duration) = match mvhd.first()? {
        0 => (
            u32::from_be_bytes(mvhd.get(12..16)?.try_into().ok()?),
            u64::from(u32::from_be_bytes(mvhd.get(16..20)?.try_into().ok()?)),
        ),
        1 => (
            u32::from_be_bytes(mvhd.get(20..24)?.try_into().ok()?),
            u64::from_be_bytes(mvhd.get(24..32)?.try_into().ok()?),
        ),
        _ => return None,
    };
    (timescale > 0).then(|| duration as f64 / f64::from(timescale))
}

/// The body of the first box of type `kind` among the boxes that fill `bytes`.
fn find_box<'a>(mut bytes: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    while bytes.len() >= 8 {
        let size = u64::from(u32::from_be_bytes(bytes[0..4].try_into().ok()?));
        let (header, size) = match size {
            0 => (8, bytes.len() as u64),
            1 => (16, u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?)),
            size => (8, size),
        };
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s >= header && s <= bytes.len())?;
        if &bytes[4..8] == kind {
            return Some(&bytes[header..size]);
        }
        bytes = &bytes[size..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mp4_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out
    }

    /// A minimal MP4: `ftyp`, then `moov` holding a version-0 `mvhd` (and a track box before
    /// it, so the search walks past boxes).
    fn mp4(timescale: u32, duration: u32) -> Vec<u8> {
        let mut mvhd = vec![0u8; 4 + 8];
        mvhd.extend_from_slice(&timescale.to_be_bytes());
        mvhd.extend_from_slice(&duration.to_be_bytes());
        mvhd.extend_from_slice(&[0; 80]);
        let moov = [mp4_box(b"trak", &[0; 16]), mp4_box(b"mvhd", &mvhd)].concat();
        [mp4_box(b"ftyp", b"isom\0\0\0\0isommp41"), mp4_box(b"moov", &moov)].concat()
    }

    #[test]
    fn an_opus_voice_note_lasts_what_its_last_granule_says() {
        let ogg = include_bytes!("../../../../tests/fixtures/voice-note-2s.ogg");
        assert_eq!(media_seconds(MediaKind::Voice, ogg), Some(2));
        assert_eq!(media_seconds(MediaKind::Audio, ogg), Some(2));
    }

    #[test]
    fn an_mp4_lasts_its_movie_header_duration() {
        assert_eq!(media_seconds(MediaKind::Video, &mp4(600, 9_300)), Some(16));
        assert_eq!(media_seconds(MediaKind::Audio, &mp4(44_100, 44_100 * 3)), Some(3));
        // A moment still shows as one second.
        assert_eq!(media_seconds(MediaKind::Video, &mp4(1000, 200)), Some(1));
    }

    #[test]
    fn other_files_and_other_kinds_have_no_duration() {
        assert_eq!(media_seconds(MediaKind::Audio, b"ID3\x03 an mp3 is not read"), None);
        assert_eq!(media_seconds(MediaKind::Video, &mp4(0, 100)), None);
        assert_eq!(media_seconds(MediaKind::Video, &mp4(600, 9_300)[..40]), None);
        assert_eq!(media_seconds(MediaKind::Video, b"OggS"), None);
        let ogg = include_bytes!("../../../../tests/fixtures/voice-note-2s.ogg");
        assert_eq!(media_seconds(MediaKind::Image, ogg), None);
        assert_eq!(media_seconds(MediaKind::Document, &mp4(600, 9_300)), None);
    }
}
