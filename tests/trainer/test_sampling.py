"""What a run samples with: built once, one at a time, released with the run."""

import gc
import weakref

from trainer.sampling import Samplers


class Pipeline:
    pass


def test_what_a_run_samples_with_is_built_once_one_at_a_time_and_released():
    samplers = Samplers()
    built = []

    def build(name):
        built.append(name)
        return Pipeline()

    first = samplers.get("a", lambda: build("a"))
    assert samplers.get("a", lambda: build("a")) is first and built == ["a"]
    alive = weakref.ref(first)
    del first
    samplers.get("b", lambda: build("b"))  # a second key drops the first: one pipeline in memory at a time
    gc.collect()
    assert alive() is None and built == ["a", "b"]
    second = weakref.ref(samplers.get("b", lambda: build("b")))
    samplers.release()
    gc.collect()
    assert second() is None
