// Pancake's H.264 helpers for the live view: Annex B parsing, and fragmented MP4 for Media Source Extensions.
"use strict";

(function () {
  const NAL_IDR = 5, NAL_SPS = 7, NAL_PPS = 8, NAL_AUD = 9;
  const TIMESCALE = 90000; // the track's clock (the usual one for video)
  // The profiles whose SPS carries chroma format and bit depths (H.264 7.3.2.1.1), and whose
  // avcC then must say them too (ISO/IEC 14496-15 5.3.3.1.2).
  const HIGH = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135];

  // The NAL units of an Annex B access unit (views into `bytes`, start codes removed).
  function nalUnits(bytes) {
    const units = [];
    let start = -1;
    let i = 0;
    const n = bytes.length;
    while (i + 2 < n) {
      if (bytes[i] === 0 && bytes[i + 1] === 0 && bytes[i + 2] === 1) {
        if (start >= 0) units.push(trimmed(bytes, start, i));
        i += 3;
        start = i;
      } else {
        i += 1;
      }
    }
    if (start >= 0 && start < n) units.push(trimmed(bytes, start, n));
    return units.filter((u) => u.length > 0);
  }

  // A NAL unit never ends in a zero byte (its RBSP stop bit): trailing zeros belong to the
  // next four-byte start code.
  function trimmed(bytes, start, end) {
    while (end > start && bytes[end - 1] === 0) end -= 1;
    return bytes.subarray(start, end);
  }

  function nalType(unit) { return unit[0] & 0x1f; }

  // {idr, sps, pps} of one access unit.
  function inspect(bytes) {
    const units = nalUnits(bytes);
    let idr = false, sps = null, pps = null;
    for (const u of units) {
      const t = nalType(u);
      if (t === NAL_IDR) idr = true;
      else if (t === NAL_SPS && !sps) sps = u;
      else if (t === NAL_PPS && !pps) pps = u;
    }
    return { units, idr, sps, pps };
  }

  // "avc1.PPCCLL", the codec string WebCodecs and MSE want, from the SPS's first bytes.
  function codecString(sps) {
    const hex = (v) => v.toString(16).padStart(2, "0");
    return "avc1." + hex(sps[1]) + hex(sps[2]) + hex(sps[3]);
  }

  // Reads an SPS (after its NAL header, emulation prevention removed) bit by bit.
  function BitReader(bytes) {
    let pos = 0;
    function bit() {
      if (pos >= bytes.length * 8) throw new Error("SPS too short");
      const b = (bytes[pos >> 3] >> (7 - (pos & 7))) & 1;
      pos += 1;
      return b;
    }
    function u(n) { let v = 0; for (let i = 0; i < n; i++) v = v * 2 + bit(); return v; }
    function ue() {
      let zeros = 0;
      while (bit() === 0) { zeros += 1; if (zeros > 31) throw new Error("bad Exp-Golomb code"); }
      return (2 ** zeros - 1) + u(zeros);
    }
    function se() { const k = ue(); return k % 2 ? (k + 1) / 2 : -k / 2; }
    return { u, ue, se };
  }

  function unescape(bytes) {
    const out = [];
    let zeros = 0;
    for (const b of bytes) {
      if (zeros >= 2 && b === 3) { zeros = 0; continue; }
      out.push(b);
      zeros = b === 0 ? zeros + 1 : 0;
    }
    return new Uint8Array(out);
  }

  // Picture size and chroma/bit-depth fields of an SPS NAL unit (header byte included).
  function parseSps(sps) {
    const r = BitReader(unescape(sps.subarray(1)));
    const profile = r.u(8);
    r.u(8); // constraint flags
    r.u(8); // level
    r.ue(); // seq_parameter_set_id
    let chroma = 1, depthLuma = 0, depthChroma = 0;
    if (HIGH.includes(profile)) {
      chroma = r.ue();
      if (chroma === 3) r.u(1);
      depthLuma = r.ue();
      depthChroma = r.ue();
      r.u(1); // qpprime_y_zero_transform_bypass_flag
      if (r.u(1)) {
        for (let i = 0; i < (chroma !== 3 ? 8 : 12); i++) {
          if (!r.u(1)) continue;
          let last = 8, next = 8;
          for (let j = 0; j < (i < 6 ? 16 : 64); j++) {
            if (next !== 0) next = (last + r.se() + 256) % 256;
            last = next === 0 ? last : next;
          }
        }
      }
    }
    r.ue(); // log2_max_frame_num_minus4
    const poc = r.ue();
    if (poc === 0) {
      r.ue();
    } else if (poc === 1) {
      r.u(1); r.se(); r.se();
      const n = r.ue();
      for (let i = 0; i < n; i++) r.se();
    }
    r.ue(); // max_num_ref_frames
    r.u(1); // gaps_in_frame_num_value_allowed_flag
    const widthMbs = r.ue() + 1;
    const heightMaps = r.ue() + 1;
    const frameMbsOnly = r.u(1);
    if (!frameMbsOnly) r.u(1);
    r.u(1); // direct_8x8_inference_flag
    let left = 0, right = 0, top = 0, bottom = 0;
    if (r.u(1)) { left = r.ue(); right = r.ue(); top = r.ue(); bottom = r.ue(); }
    const cropX = chroma === 1 || chroma === 2 ? 2 : 1;
    const cropY = (chroma === 1 ? 2 : 1) * (2 - frameMbsOnly);
    return {
      profile, chroma, depthLuma, depthChroma,
      width: widthMbs * 16 - (left + right) * cropX,
      height: (2 - frameMbsOnly) * heightMaps * 16 - (top + bottom) * cropY,
    };
  }

  // ---- ISO BMFF boxes -----------------------------------------------------------------

  function concat(parts) {
    let n = 0;
    for (const p of parts) n += p.length;
    const out = new Uint8Array(n);
    let at = 0;
    for (const p of parts) { out.set(p, at); at += p.length; }
    return out;
  }

  function u8(...values) { return new Uint8Array(values); }
  function u16(...values) {
    const out = new Uint8Array(values.length * 2);
    const dv = new DataView(out.buffer);
    values.forEach((v, i) => dv.setUint16(i * 2, v));
    return out;
  }
  function u32(...values) {
    const out = new Uint8Array(values.length * 4);
    const dv = new DataView(out.buffer);
    values.forEach((v, i) => dv.setUint32(i * 4, v >>> 0));
    return out;
  }
  function u64(value) { return u32(Math.floor(value / 2 ** 32), value % 2 ** 32); }
  function ascii(text) { return new Uint8Array([...text].map((c) => c.charCodeAt(0))); }

  function box(type, ...parts) {
    const body = concat(parts);
    return concat([u32(body.length + 8), ascii(type), body]);
  }
  // A "full box": version and flags before its fields.
  function full(type, version, flags, ...parts) {
    return box(type, u32((version << 24) | flags), ...parts);
  }

  const MATRIX = u32(0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000);

  function avcC(sps, pps, info) {
    const parts = [u8(1, sps[1], sps[2], sps[3], 0xff, 0xe1), u16(sps.length), sps,
      u8(1), u16(pps.length), pps];
    if (HIGH.includes(info.profile)) {
      parts.push(u8(0xfc | info.chroma, 0xf8 | info.depthLuma, 0xf8 | info.depthChroma, 0));
    }
    return box("avcC", ...parts);
  }

  // ftyp + moov for one H.264 track, from the stream's SPS and PPS (NAL units).
  function initSegment(sps, pps) {
    const info = parseSps(sps);
    const w = info.width, h = info.height;
    const avc1 = box("avc1",
      u8(0, 0, 0, 0, 0, 0), u16(1), // reserved, data_reference_index
      u16(0, 0), u32(0, 0, 0), u16(w, h), u32(0x00480000, 0x00480000, 0), u16(1),
      new Uint8Array(32), u16(0x18, 0xffff), avcC(sps, pps, info));
    const stbl = box("stbl",
      full("stsd", 0, 0, u32(1), avc1),
      full("stts", 0, 0, u32(0)), full("stsc", 0, 0, u32(0)),
      full("stsz", 0, 0, u32(0, 0)), full("stco", 0, 0, u32(0)));
    const minf = box("minf",
      full("vmhd", 0, 1, u16(0, 0, 0, 0)),
      box("dinf", full("dref", 0, 0, u32(1), full("url ", 0, 1))),
      stbl);
    const mdia = box("mdia",
      full("mdhd", 0, 0, u32(0, 0, TIMESCALE, 0), u16(0x55c4, 0)),
      full("hdlr", 0, 0, u32(0), ascii("vide"), u32(0, 0, 0), ascii("Pancake\0")),
      minf);
    const trak = box("trak",
      full("tkhd", 0, 3, u32(0, 0, 1, 0, 0, 0, 0), u16(0, 0, 0, 0), MATRIX, u32(w * 65536, h * 65536)),
      mdia);
    const moov = box("moov",
      full("mvhd", 0, 0, u32(0, 0, 1000, 0, 0x00010000), u16(0x0100, 0), u32(0, 0), MATRIX,
        u32(0, 0, 0, 0, 0, 0, 2)),
      trak,
      box("mvex", full("trex", 0, 0, u32(1, 1, 0, 0, 0))));
    const ftyp = box("ftyp", ascii("isom"), u32(0x200), ascii("isomiso2avc1iso6mp41"));
    return { bytes: concat([ftyp, moov]), codec: codecString(sps), width: w, height: h };
  }

  // moof + mdat for one access unit: `units` its NAL units, `dts` and `duration` in TIMESCALE.
  function fragment(sequence, units, key, dts, duration) {
    const samples = [];
    for (const u of units) {
      const t = nalType(u);
      if (t === NAL_SPS || t === NAL_PPS || t === NAL_AUD) continue; // in avcC, or not allowed
      samples.push(u32(u.length), u);
    }
    const data = concat(samples);
    // sample_depends_on 2 (a sync sample), or 1 with sample_is_non_sync_sample.
    const flags = key ? 0x02000000 : 0x01010000;
    const moofSize = 8 + 16 + 8 + 16 + 20 + 32; // moof, mfhd, traf, tfhd, tfdt v1, trun
    const moof = box("moof",
      full("mfhd", 0, 0, u32(sequence)),
      box("traf",
        full("tfhd", 0, 0x020000, u32(1)), // default-base-is-moof
        full("tfdt", 1, 0, u64(dts)),
        full("trun", 0, 0x000701, u32(1, moofSize + 8, duration, data.length, flags))));
    if (moof.length !== moofSize) throw new Error("moof size");
    return concat([moof, box("mdat", data)]);
  }

  window.PancakeH264 = { nalUnits, inspect, codecString, parseSps, initSegment, fragment, TIMESCALE };
})();
