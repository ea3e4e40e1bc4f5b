"""Every error kneuron raises on purpose, in one module: the one family users catch.

Each message is one line that says what was wrong and what to do. ``KneuronError`` is the base; the errors about
a caller's input (a malformed fact, an index outside the model, a bad option or probe) also subclass
``ValueError``, so code that already catches ``ValueError`` sees them too.
"""

from __future__ import annotations


class KneuronError(Exception):
    """Base class for every error kneuron raises on purpose."""


class InputError(KneuronError, ValueError):
    """A value the caller passed is malformed or out of range (also a ``ValueError``)."""


class ModelLoadError(KneuronError):
    """A model could not be found or loaded."""


class UnsupportedArchitectureError(KneuronError):
    """The model's architecture has no registered spec."""


class FactError(InputError):
    """A fact, template, prompt or answer is malformed."""


class AnswerVocabularyError(FactError):
    """An answer the model's tokenizer cannot spell: it tokenizes to nothing, or (a masked model) to the unknown
    token. Not the fact's fault: another model may have the words (``known_facts`` skips such facts)."""


class NeuronIndexError(InputError):
    """A layer or neuron index lies outside the model."""


class EditError(KneuronError):
    """An edit that cannot be made, applied, undone, saved or loaded."""


class BrokenModelError(KneuronError):
    """A model whose outputs are unusable: its clean forward pass gives non-finite logits."""


class EditBreaksModelError(EditError):
    """An edit whose application makes the model's outputs non-finite or uniform on the edited fact's prompts."""


class EditOptionError(EditError, InputError):
    """An edit asked for with a bad argument: an unknown option, a number out of range, unusable answers (also an
    ``InputError`` and a ``ValueError``)."""


class VocabularyError(KneuronError):
    """A model whose value slots have no projection onto its vocabulary."""


class AtlasError(KneuronError):
    """An atlas that cannot be opened, read or written as asked (missing, another model's, not finished)."""


class OutOfMemory(KneuronError):
    """A batch of attribution did not fit its device's memory (CUDA, or the CPU allocator): one line saying what
    was tried, what it was estimated to need and which setting to lower (``memory_budget``, ``batch_rows``,
    ``--chunk-facts``); raised by :func:`kneuron.attribution.limits.out_of_memory_as_error`."""


class StudyError(KneuronError):
    """A study that cannot run as asked (unknown name, missing inputs, an option out of range)."""


# ------------------------------------------------------------------------------------------------ the web app


class NotFound(KneuronError):
    """A page of something the atlas does not have (the server answers 404 with the message)."""


class ProbeInputError(InputError):
    """What a page sent cannot be probed: one line saying what was wrong and what to do (the page shows it)."""


class NoModel(KneuronError):
    """A probe on a server started without a model."""


class QueueFull(KneuronError):
    """Too many probes are waiting; the page asks the user to try again."""


class QueueClosed(KneuronError):
    """The queue was closed (the server is shutting down)."""


class JobTimeout(KneuronError):
    """:meth:`~kneuron.serve.jobs.ProbeQueue.run` stopped waiting; the job (``job_id``) goes on in the background."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobFailed(KneuronError):
    """A job waited for by :meth:`~kneuron.serve.jobs.ProbeQueue.run` failed with an error that is not a
    KneuronError (the message is ``job.error``: "internal error: <ExceptionType>"; the traceback is logged)."""
