// Band-limited resampling of a stream of float samples (docs/web.md): the microphone's rate (44.1 or 48 kHz,
// whatever the AudioContext runs at) to the 16 kHz the gateway takes. Each output sample is the input
// convolved with a Kaiser-windowed sinc low-pass centred on its exact position in the input (J. O. Smith's
// bandlimited interpolation), looked up in a table with linear interpolation between its points. Any ratio
// works; there is no aliasing of the content above 8 kHz back into the speech band, which linear
// interpolation or dropping samples would cause.
//
// Used by the capture worklet (capture-worklet.js) and importable as a plain ES module (the tests measure it).

const ZERO_CROSSINGS = 32; // of the sinc on each side: the filter's length and the steepness of its edge
const TABLE_STEPS = 512; // table points per zero crossing
const KAISER_BETA = 8.0; // about 80 dB of stop-band attenuation
const PASSBAND = 0.92; // cutoff as a fraction of the output's Nyquist frequency (7.36 kHz at 16 kHz)

function besselI0(x) {
  let sum = 1;
  let term = 1;
  for (let k = 1; k < 50; k++) {
    term *= (x / (2 * k)) ** 2;
    sum += term;
    if (term < sum * 1e-12) break;
  }
  return sum;
}

function kernelTable() {
  const n = ZERO_CROSSINGS * TABLE_STEPS;
  const table = new Float64Array(n + 2); // +2: the interpolation may read one past the last point
  const norm = besselI0(KAISER_BETA);
  for (let i = 0; i <= n; i++) {
    const x = i / TABLE_STEPS; // in zero crossings of the sinc
    const sinc = i === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    const r = x / ZERO_CROSSINGS;
    table[i] = (sinc * besselI0(KAISER_BETA * Math.sqrt(Math.max(0, 1 - r * r)))) / norm;
  }
  return table;
}

const TABLE = kernelTable();

export class Resampler {
  /** Resample from `inRate` to `outRate` (Hz); `push` takes any number of samples at a time. */
  constructor(inRate, outRate) {
    if (!(inRate > 0 && outRate > 0)) throw new RangeError("sample rates must be positive");
    this.step = inRate / outRate; // input samples per output sample
    // The cutoff in cycles per input sample, below both Nyquist frequencies.
    const cutoff = 0.5 * Math.min(1, outRate / inRate) * PASSBAND;
    this.scale = 2 * cutoff; // sinc argument per input sample, and the filter's gain
    this.half = Math.ceil(ZERO_CROSSINGS / this.scale); // input samples on each side of a point
    // The input not yet used, starting `half` zeros early so the first output sample is input sample 0.
    this.buffer = new Float64Array(Math.max(4096, 4 * this.half));
    this.length = this.half;
    this.position = this.half; // the next output sample's place in `buffer`, in input samples
  }

  /** The output samples that `input` (a Float32Array or an array) completes, as a Float32Array. */
  push(input) {
    this._append(input);
    const out = [];
    while (this.position + this.half < this.length) {
      out.push(this._sampleAt(this.position));
      this.position += this.step;
    }
    this._discardUsed();
    return Float32Array.from(out);
  }

  /** The output samples still owed once the input has ended (the input followed by silence). */
  flush() {
    return this.push(new Float32Array(this.half + 1));
  }

  _sampleAt(t) {
    const centre = Math.floor(t);
    const frac = t - centre;
    const buf = this.buffer;
    const perSample = this.scale * TABLE_STEPS; // table points per input sample
    const last = ZERO_CROSSINGS * TABLE_STEPS;
    let acc = 0;
    // Left wing: input samples at or before t; right wing: after it.
    for (let i = 0; i <= this.half; i++) {
      const where = (frac + i) * perSample;
      const k = Math.floor(where);
      if (k >= last) break;
      const w = TABLE[k] + (where - k) * (TABLE[k + 1] - TABLE[k]);
      acc += buf[centre - i] * w;
    }
    for (let i = 1; i <= this.half; i++) {
      const where = (i - frac) * perSample;
      const k = Math.floor(where);
      if (k >= last) break;
      const w = TABLE[k] + (where - k) * (TABLE[k + 1] - TABLE[k]);
      acc += buf[centre + i] * w;
    }
    return acc * this.scale;
  }

  _append(input) {
    const need = this.length + input.length;
    if (need > this.buffer.length) {
      const bigger = new Float64Array(Math.max(need, 2 * this.buffer.length));
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    this.buffer.set(input, this.length);
    this.length = need;
  }

  _discardUsed() {
    // Keep `half` samples before the next output's centre; rebasing keeps `position` small.
    const drop = Math.floor(this.position) - this.half;
    if (drop <= 0) return;
    this.buffer.copyWithin(0, drop, this.length);
    this.length -= drop;
    this.position -= drop;
  }
}

/** Float samples in [-1, 1] to little-endian PCM16 (clipped, rounded). */
export function toPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = Math.round(s * 32767);
  }
  return out;
}
