"""The reference answers to the exercises: the library's own implementations.

Each ``exNN_topic.py`` here re-exports real tinyllm code under the names the exercise file
uses, so ``tinyllm grade --solutions`` checks the grader against the one canonical
implementation - never a second copy of it.
"""
