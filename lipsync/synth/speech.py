"""Real speech synthesis with espeak-ng, driven through ctypes.

`espeakng-loader` ships libespeak-ng and its voice data; we load the library with
ctypes, run it in synchronous mode (samples arrive in a callback, no audio device) and
collect 22.05 kHz int16 samples plus word and phoneme events, then resample to the
project's 16 kHz.

Determinism: some voice variants add breath/flutter noise from espeak's own random
generator, which is seeded from the clock unless told otherwise, so every utterance
calls ``espeak_ng_SetRandSeed`` first; and espeak keeps synthesis state across
utterances, so the library is loaded fresh for each one (see `_Engine`). The same text,
voice and seed then give byte-identical samples in any process, in any order.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import resample_poly

from lipsync.errors import LipsyncError

SAMPLE_RATE = 16000
ESPEAK_RATE = 22050

# espeak_AUDIO_OUTPUT / event types / parameters / flags from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
_POS_CHARACTER = 1
_CHARS_UTF8 = 1

# Voices that exist in espeakng-loader's data: language + variant (voices/!v/<variant>).
LANGUAGES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2", "klatt3", "andy", "david", "linda", "max", "ed", "john")

# A small everyday vocabulary; sentences are random draws from it, so even a few dozen
# clips get many distinct sentences.
WORDS = """
apple baby back ball bank basket bath bear bed bell bird birthday black blue boat body
bone book boot bottle box boy bread brother brown bus butter button cake camera candle
car card carpet cat chair cheese chicken child city clock cloud coat coffee cold corner
cow cup dance daughter day desk dinner doctor dog door dream dress drink duck egg
evening eye face family farm father feather field finger fire fish floor flower foot
forest friend garden girl glass gold grass green hair hand happy hat head heart hill
home horse house ice island jacket juice key king kitchen lake lamp leaf letter light
lion lunch machine man map market milk money monkey moon morning mother mountain mouse
music name night nose ocean orange paper park party pencil people piano picture pillow
plane plate pocket potato queen rabbit rain river road robot room rose salt sand school
sea shadow sheep ship shoe shop silver sister sky snow soap song soup spoon spring star
station stone street sugar summer sun table teacher tea tiger time toast tomato tooth
town toy train tree truck umbrella uncle valley village violin voice wall watch water
window winter wolf woman wood world yellow zebra
big small quick slow bright dark warm soft loud quiet old new red round tall early late
good open heavy sweet happy funny gentle
sees finds brings takes makes wants likes opens paints moves carries follows watches
buys keeps loves needs calls visits cleans builds draws
""".split()
_ADJECTIVES = set("big small quick slow bright dark warm soft loud quiet old new red "
                  "round tall early late good open heavy sweet happy funny gentle black "
                  "blue brown green orange yellow silver gold cold".split())
_VERBS = set("sees finds brings takes makes wants likes opens paints moves carries follows "
             "watches buys keeps loves needs calls visits cleans builds draws".split())
_NOUNS = [w for w in dict.fromkeys(WORDS) if w not in _ADJECTIVES and w not in _VERBS]
_ADJ_LIST = sorted(_ADJECTIVES)
_VERB_LIST = sorted(_VERBS)
_DETERMINERS = ("the", "a", "my", "your", "this", "that", "every", "one")


class SpeechError(LipsyncError):
    """espeak-ng could not be loaded or failed to synthesise."""


@dataclass(frozen=True)
class Voice:
    """How one speaker sounds: espeak voice name plus prosody parameters."""

    name: str = "en-us"        # e.g. "en-gb+f3"
    rate: int = 160            # words per minute (espeak 80..450)
    pitch: int = 50            # 0..100
    pitch_range: int = 50      # 0..100 (monotone .. lively)
    word_gap: int = 6          # extra pause between words, units of 10 ms

    @staticmethod
    def random(rng: np.random.Generator) -> "Voice":
        lang = LANGUAGES[int(rng.integers(len(LANGUAGES)))]
        variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
        return Voice(
            name=f"{lang}+{variant}" if variant else lang,
            rate=int(rng.integers(130, 185)),
            pitch=int(rng.integers(25, 80)),
            pitch_range=int(rng.integers(30, 90)),
            word_gap=int(rng.integers(4, 12)),
        )


@dataclass
class Utterance:
    """Synthesised speech: float32 mono audio and the events espeak reported.

    Event times are seconds from the start of `audio`. `phonemes` are espeak's
    phoneme mnemonics ("_" is a pause).
    """

    text: str
    audio: np.ndarray
    sample_rate: int = SAMPLE_RATE
    words: list[tuple[float, str]] = field(default_factory=list)       # (start_s, word)
    phonemes: list[tuple[float, str]] = field(default_factory=list)    # (start_s, mnemonic)

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


def random_sentence(rng: np.random.Generator, n_words: int | None = None) -> str:
    """A random, roughly grammatical sentence ("the quick dog finds a red hat")."""
    n_words = int(rng.integers(4, 9)) if n_words is None else n_words
    words: list[str] = []
    while len(words) < n_words:
        words.append(_DETERMINERS[int(rng.integers(len(_DETERMINERS)))])
        if rng.random() < 0.5:
            words.append(_ADJ_LIST[int(rng.integers(len(_ADJ_LIST)))])
        words.append(_NOUNS[int(rng.integers(len(_NOUNS)))])
        if len(words) < n_words:
            words.append(_VERB_LIST[int(rng.integers(len(_VERB_LIST)))])
    return " ".join(words[:max(1, n_words)])


class _Event(ctypes.Structure):
    class _Id(ctypes.Union):
        _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
                    ("string", ctypes.c_char * 8)]

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _Id)]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))


class _Engine:
    """One espeak-ng run: load the library, speak one text, unload it again.

    espeak-ng keeps synthesis state in static variables (pitch flutter index, waveform
    phase, ...) that survive espeak_Terminate/espeak_Initialize, so the same text would
    come out a few samples different depending on what was spoken before. Unloading the
    library (dlclose) after every utterance gives each one fresh state: the output then
    depends only on text, voice and seed, whatever order clips are made in and by which
    worker process. Loading costs ~20 ms.
    """

    _lock = threading.Lock()   # the library's state is process-global

    def __init__(self) -> None:
        try:
            import espeakng_loader
            self.lib_path = espeakng_loader.get_library_path()
            self.data_path = espeakng_loader.get_data_path()
        except (ImportError, RuntimeError) as exc:
            raise SpeechError(f"cannot find espeak-ng via espeakng-loader: {exc}") from exc
        self.rate = ESPEAK_RATE
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, str]] = []
        # Keep a reference: ctypes frees the trampoline if the Python object dies.
        self._callback = _Callback(self._on_samples)

    def _load(self):
        try:
            lib = ctypes.CDLL(self.lib_path)
        except OSError as exc:
            raise SpeechError(f"cannot load {self.lib_path}: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_Callback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(),
                                     _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT)
        if rate <= 0:
            self._unload(lib)
            raise SpeechError(f"espeak_Initialize failed (data path {self.data_path})")
        self.rate = rate
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    @staticmethod
    def _unload(lib) -> None:
        import _ctypes

        lib.espeak_Terminate()
        _ctypes.dlclose(lib._handle)

    def _on_samples(self, wav, n_samples, events) -> int:
        if n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                name = bytes(ev.id.string).split(b"\0")[0].decode("ascii", "replace")
                self._events.append((ev.type, ev.sample, name))
            elif ev.type == _EVENT_WORD:
                self._events.append((ev.type, ev.sample, f"{ev.text_position}:{ev.length}"))
            i += 1
        return 0

    def synthesize(self, text: str, voice: Voice, seed: int) -> tuple[np.ndarray, list]:
        with self._lock:
            lib = self._load()
            try:
                if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                    raise SpeechError(f"espeak-ng has no voice {voice.name!r}")
                for param, value in ((_PARAM_RATE, voice.rate), (_PARAM_PITCH, voice.pitch),
                                     (_PARAM_RANGE, voice.pitch_range), (_PARAM_WORDGAP, voice.word_gap),
                                     (_PARAM_VOLUME, 100)):
                    lib.espeak_SetParameter(param, int(value), 0)
                # Breath/flutter noise of some variants is seeded from the clock otherwise.
                lib.espeak_ng_SetRandSeed(int(seed) & 0x7FFFFFFF)
                self._chunks, self._events = [], []
                data = text.encode("utf-8")
                status = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                if status != 0 or lib.espeak_Synchronize() != 0:
                    raise SpeechError(f"espeak_Synth failed with status {status} for {text!r}")
            finally:
                self._unload(lib)
            samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return samples, list(self._events)


_ENGINE: _Engine | None = None


def _engine() -> _Engine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def synthesize(text: str, voice: Voice = Voice(), seed: int = 0) -> Utterance:
    """Speak `text` with `voice`; returns 16 kHz float32 audio and word/phoneme times."""
    engine = _engine()
    samples, events = engine.synthesize(text, voice, seed)
    if samples.size == 0:
        raise SpeechError(f"espeak-ng produced no audio for {text!r}")
    audio22 = samples.astype(np.float32) / 32768.0
    # 22050 -> 16000 = 320/441; polyphase filtering is exact and deterministic.
    audio = resample_poly(audio22, 320, 441).astype(np.float32)
    scale = SAMPLE_RATE / engine.rate
    words, phonemes = [], []
    for kind, sample, value in events:
        t = sample * scale / SAMPLE_RATE
        if kind == _EVENT_WORD:
            pos, length = (int(v) for v in value.split(":"))
            # text_position is 1-based characters into the UTF-8 text
            words.append((t, text[pos - 1:pos - 1 + length]))
        else:
            phonemes.append((t, value))
    return Utterance(text=text, audio=audio, words=words, phonemes=phonemes)
