// Package schemas defines rekey's on-disk formats: the cell ciphertext
// envelope and its additional authenticated data, the DEK table row, the
// migration ledger row and the run manifest. docs/FORMAT.md is the prose
// version of this package; the two must agree.
//
// Nothing here does I/O. Every parser of untrusted bytes in this package
// checks lengths and caps sizes, and has a fuzz target.
//
// Limits: only AES-256-GCM cells (envelope version 1) are defined.
package schemas
