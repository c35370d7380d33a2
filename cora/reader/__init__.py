"""Readers: (question, passages, answer language) -> Answer with cited evidence."""

from cora.reader.base import Answer, Evidence, Reader, ReaderConfig, load_reader
from cora.reader.extractive import ExtractiveReader
from cora.reader.projection import project_answer
from cora.reader.seq2seq import Seq2SeqGenerator, format_source, training_passages

__all__ = ["Answer", "Evidence", "Reader", "ReaderConfig", "load_reader", "ExtractiveReader", "Seq2SeqGenerator",
           "format_source", "training_passages", "project_answer"]
