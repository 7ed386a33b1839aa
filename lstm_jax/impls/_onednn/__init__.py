"""The C++ side of ``impl="onednn"``: the FFI source (``ffi_rnn.cc``) and its build-on-first-use (:mod:`.build`)."""
