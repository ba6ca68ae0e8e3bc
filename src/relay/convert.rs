//! Media GHL cannot show, converted to what it accepts (GHL_API.md §7: no OGG/Opus, no WebP):
//! WhatsApp voice notes (OGG/Opus) become 16 kHz mono WAV — small, and playable in every
//! browser — and stickers (WebP) become PNG. Pure Rust, no ffmpeg: `ogg` demuxes, the
//! `opus-decoder` crate (an RFC 8251 conformant decoder without FFI) decodes, `image-webp`
//! and `png` convert stickers.

use std::io::Cursor;

use crate::domain::MediaKind;

/// Largest sticker converted (pixels); a crafted WebP cannot make waghl allocate gigabytes.
const MAX_PIXELS: u64 = 4096 * 4096;

/// Output rate of converted voice notes: speech needs no more, and it keeps files small.
const VOICE_RATE: u32 = 16_000;

/// A converted file and its content type.
pub struct Converted {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
}

/// OGG/Opus → 16 kHz mono 16-bit WAV.
pub fn voice_to_wav(ogg: &[u8]) -> Result<Converted, String> {
    let mut reader = ogg::PacketReader::new(Cursor::new(ogg));
    let head = reader
        .read_packet()
        .map_err(|e| format!("not an OGG file: {e}"))?
        .ok_or("an empty OGG file")?;
    if !head.data.starts_with(b"OpusHead") || head.data.len() < 19 {
        return Err("the OGG stream is not Opus".into());
    }
    // Samples at 48 kHz the encoder put before the audio; dropped, scaled to our rate.
    let pre_skip = u16::from_le_bytes([head.data[10], head.data[11]]) as usize / (48_000 / VOICE_RATE as usize);
    let mut decoder = opus_decoder::OpusDecoder::new(VOICE_RATE, 1).map_err(|e| format!("opus decoder: {e:?}"))?;
    let mut frame = vec![0i16; decoder.max_frame_size_per_channel()];
    let mut pcm: Vec<i16> = Vec::new();
    while let Some(packet) = reader.read_packet().map_err(|e| format!("broken OGG stream: {e}"))? {
        if packet.data.starts_with(b"OpusTags") {
            continue;
        }
        let samples = decoder
            .decode(&packet.data, &mut frame, false)
            .map_err(|e| format!("undecodable Opus packet: {e:?}"))?;
        pcm.extend_from_slice(&frame[..samples]);
    }
    let audio = pcm.get(pre_skip..).unwrap_or_default();
    Ok(Converted {
        bytes: wav(audio, VOICE_RATE),
        content_type: "audio/wav",
    })
}

/// A RIFF/WAVE file of mono 16-bit samples.
fn wav(samples: &[i16], rate: u32) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

/// WebP (a sticker; the first frame of an animated one) → PNG.
pub fn webp_to_png(webp: &[u8]) -> Result<Converted, String> {
    let mut decoder = image_webp::WebPDecoder::new(Cursor::new(webp)).map_err(|e| format!("not a WebP image: {e}"))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(format!("the sticker is too large ({width}×{height})"));
    }
    let alpha = decoder.has_alpha();
    let size = decoder.output_buffer_size().ok_or("the sticker is too large")?;
    let mut pixels = vec![0u8; size];
    decoder
        .read_image(&mut pixels)
        .map_err(|e| format!("undecodable WebP image: {e}"))?;
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(if alpha {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    });
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(&pixels))
        .map_err(|e| format!("PNG encoding failed: {e}"))?;
    Ok(Converted {
        bytes,
        content_type: "image/png",
    })
}

/// What GHL gets for a WhatsApp media file: voice notes and OGG audio as WAV, stickers and
/// WebP images as PNG, everything else as it is. A file that fails to convert is sent as it is
/// (GHL may refuse it; then the message says why it is dead).
pub fn for_ghl(kind: MediaKind, mime: &str, bytes: Vec<u8>) -> (Vec<u8>, String, bool) {
    let converted = match (kind, mime.split(';').next().unwrap_or_default().trim()) {
        (MediaKind::Voice, _) | (_, "audio/ogg" | "audio/opus") => Some(voice_to_wav(&bytes)),
        (MediaKind::Sticker, _) | (_, "image/webp") => Some(webp_to_png(&bytes)),
        _ => None,
    };
    match converted {
        Some(Ok(file)) => (file.bytes, file.content_type.to_owned(), true),
        Some(Err(e)) => {
            tracing::warn!(error = %e, kind = kind.as_str(), "could not convert a media file for GHL; sending it as it is");
            (bytes, mime.to_owned(), false)
        }
        None => (bytes, mime.to_owned(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voice_note_becomes_a_wav_of_the_same_duration() {
        let ogg = include_bytes!("../../tests/fixtures/voice-note-2s.ogg");
        let converted = voice_to_wav(ogg).unwrap();
        assert_eq!(&converted.bytes[..4], b"RIFF");
        let samples = (converted.bytes.len() - 44) / 2;
        let seconds = samples as f64 / f64::from(VOICE_RATE);
        assert!((seconds - 2.0).abs() < 0.03, "{seconds} s");
        // A tone, not silence.
        let loud = converted.bytes[44..]
            .chunks(2)
            .map(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs())
            .max()
            .unwrap();
        assert!(loud > 2000, "peak {loud}");
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(voice_to_wav(b"not ogg at all").is_err());
        assert!(webp_to_png(b"RIFF....WEBPnope").is_err());
    }

    #[test]
    fn a_sticker_becomes_a_png_of_the_same_size() {
        let mut webp = Vec::new();
        let pixels: Vec<u8> = (0..16 * 8).flat_map(|i| [i as u8, 0, 255 - i as u8, 200]).collect();
        image_webp::WebPEncoder::new(&mut webp)
            .encode(&pixels, 16, 8, image_webp::ColorType::Rgba8)
            .unwrap();
        let png = webp_to_png(&webp).unwrap();
        let decoder = png::Decoder::new(Cursor::new(png.bytes));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (16, 8));
    }
}
