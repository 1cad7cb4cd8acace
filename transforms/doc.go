// Package transforms holds rekey's DoFns and composite transforms: listing
// a dataset, rewrapping DEK tables, minting fresh DEKs, re-encrypting
// record files, verifying a dataset, and writing the run manifest.
//
// Elements are units of work (one file) and carry paths, ids and wrapped
// keys only. Unwrapped DEKs live in a bounded per-process cache and are
// zeroed on eviction; plaintext cells live in per-goroutine buffers for the
// time it takes to re-encrypt and verify them. Parallelism comes from a
// bounded pool of goroutines inside each DoFn (the direct runner gives a
// pipeline one goroutine); only the bundle's goroutine emits.
//
// Each unit commits its output file, then its ledger part; a ledger part
// under its final name therefore means the unit is complete, which is what
// resume relies on.
//
// Limits: a Go AES key schedule (inside crypto/aes) cannot be zeroed; it
// is dropped with the cache entry and left to the garbage collector.
package transforms
