"""AdaComp-RAG: adaptive retrieval (FAISS + a measured complexity gate), importable without ROS.

Modules: chunking (text -> passages), embedder (sentence-transformers), store (FAISS index
directory), ingest (files -> store), gate (complexity score -> level), adacomp (the decision,
the context budget and the multi-step loop), calibrate (gate thresholds from dev data).
"""
