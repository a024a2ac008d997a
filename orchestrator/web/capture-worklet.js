// The microphone's AudioWorklet (docs/web.md): mixes the input to mono, resamples it from the context's rate
// to 16 kHz (resampler.js) and posts PCM16 chunks of `chunkMs` (100 ms) to the page, which sends each as one
// binary WebSocket frame. `{type: "flush"}` on the port posts what is left, then `{type: "flushed"}`.

import { Resampler, toPcm16 } from "./resampler.js";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 16000, chunkMs = 100 } = options.processorOptions || {};
    this.resampler = new Resampler(sampleRate, targetRate); // `sampleRate`: the context's, a worklet global
    this.chunk = new Int16Array(Math.round((targetRate * chunkMs) / 1000));
    this.filled = 0;
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "flush") this.flush();
    };
  }

  process(inputs) {
    if (this.stopped) return false;
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      this.take(this.resampler.push(mono(channels)));
    }
    return true;
  }

  take(samples) {
    const pcm = toPcm16(samples);
    let offset = 0;
    while (offset < pcm.length) {
      const n = Math.min(pcm.length - offset, this.chunk.length - this.filled);
      this.chunk.set(pcm.subarray(offset, offset + n), this.filled);
      this.filled += n;
      offset += n;
      if (this.filled === this.chunk.length) this.post(this.chunk.length);
    }
  }

  post(n) {
    const out = this.chunk.slice(0, n);
    this.port.postMessage({ type: "audio", pcm: out.buffer }, [out.buffer]);
    this.filled = 0;
  }

  flush() {
    this.take(this.resampler.flush());
    if (this.filled > 0) this.post(this.filled);
    this.stopped = true;
    this.port.postMessage({ type: "flushed" });
  }
}

function mono(channels) {
  if (channels.length === 1) return channels[0];
  const out = new Float32Array(channels[0].length);
  for (const ch of channels) for (let i = 0; i < out.length; i++) out[i] += ch[i] / channels.length;
  return out;
}

registerProcessor("speechgw-capture", CaptureProcessor);
