"""A source file's audio track carried into an output file (``VideoWriter(audio_from=...)``), at
its own rate and quality: its packets copied when the output container takes the codec.
"""

from __future__ import annotations

from fractions import Fraction

import av

from lipsync.audio import SAMPLE_RATE
from lipsync.errors import MediaError
from lipsync.video.containers import _COPYABLE_AUDIO
from lipsync.video.probing import _open


class _AudioPassthrough:
    """The audio stream of a user's file, into an output container at its own rate and quality.

    Packets are copied when the container takes the codec; otherwise the audio is decoded and
    re-encoded to AAC keeping its sample rate and channels (at 96 kb/s per channel). ``pump(t)``
    muxes everything that starts before ``t`` seconds, so audio stays interleaved with the video.
    Timestamps are shifted so the audio starts at 0, as the decoded samples the model heard do.
    """

    def __init__(self, source: str, output, format_name: str):
        self.source = source
        self._input = _open(source)
        if not self._input.streams.audio:
            self._input.close()
            raise MediaError(f"{source}: has no audio stream")
        self._in = self._input.streams.audio[0]
        self.copy = self._in.codec_context.name in _COPYABLE_AUDIO[format_name]
        if self.copy:
            self.stream = output.add_stream_from_template(self._in)
        else:
            rate = int(self._in.codec_context.sample_rate or SAMPLE_RATE)
            self.stream = output.add_stream("aac", rate=rate)
            # By channel count: a WAV's layout can be unordered ("2 channels"), which AAC refuses.
            channels = max(1, int(self._in.codec_context.channels or 1))
            self.stream.layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}.0" if channels < 5 else "5.1")
            self.stream.bit_rate = 96_000 * max(1, self.stream.codec_context.channels)
            self._resampler = av.AudioResampler(format="fltp", layout=self.stream.layout, rate=rate)
        self._output = output
        self._packets = self._packet_iter()
        self._pending = None
        self._offset = None

    def _packet_iter(self):
        try:
            if self.copy:
                for packet in self._input.demux(self._in):
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    if self._offset is None:  # a late start moves to 0; negative = encoder priming, kept
                        self._offset = max(0, packet.pts or 0)
                    if packet.pts is not None:
                        packet.pts -= self._offset
                    packet.dts -= self._offset
                    yield packet
                return
            written = 0  # samples: explicit timestamps from 0 let the muxer trim the AAC priming

            def encode(frames):
                nonlocal written
                for resampled in frames:
                    resampled.pts, resampled.time_base = written, Fraction(1, resampled.sample_rate)
                    written += resampled.samples
                    yield from self.stream.encode(resampled)

            for frame in self._input.decode(self._in):
                frame.pts = None
                yield from encode(self._resampler.resample(frame))
            yield from encode(self._resampler.resample(None))
            yield from self.stream.encode(None)
        except av.error.FFmpegError as e:
            raise MediaError(f"{self.source}: cannot read its audio ({e})") from e

    def _seconds(self, packet) -> float:
        if packet.pts is None or packet.time_base is None:
            return 0.0
        return float(packet.pts * packet.time_base)

    def pump(self, until: float | None = None) -> None:
        """Mux the packets that start before ``until`` seconds (all of them with None)."""
        while True:
            if self._pending is None:
                self._pending = next(self._packets, None)
                if self._pending is None:
                    return
            if until is not None and self._seconds(self._pending) >= until:
                return
            packet, self._pending = self._pending, None
            packet.stream = self.stream
            self._output.mux(packet)

    def close(self) -> None:
        self._input.close()
