package transforms

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/transforms/ledger"
)

// Incremental runs. Every file rekey writes carries, in its Parquet
// key-value metadata, the fingerprint of the source file it came from. With
// Spec.Incremental a unit whose target file exists and carries the current
// source's fingerprint is skipped (one `file` ledger row, status skipped),
// so a scheduled run only does the files that are new or changed.

// Metadata keys rekey writes into every output file.
const (
	MetaSourceFingerprint = "rekey.source_fingerprint"
	MetaRunID             = "rekey.run_id"
	// MetaTarget names the target KEK and wrap the file was made for: a
	// run towards another key is never "unchanged".
	MetaTarget = "rekey.target"
)

// fingerprintTail is how much of a file's end (the Parquet footer: schema,
// row group offsets, sizes and statistics) the fingerprint covers.
const fingerprintTail = 64 << 10

// Fingerprint identifies a source file's content cheaply: SHA-256 of its
// size and its last 64 KiB. A Parquet file whose data changes gets a new
// footer (offsets, sizes, statistics), so a changed file gets a new
// fingerprint without reading it whole.
func Fingerprint(f storage.File) (string, error) {
	size := f.Size()
	n := min(size, fingerprintTail)
	buf := make([]byte, n)
	if _, err := f.ReadAt(buf, size-n); err != nil {
		return "", fmt.Errorf("fingerprint: %w", err)
	}
	h := sha256.New()
	_ = binary.Write(h, binary.BigEndian, size)
	h.Write(buf)
	return hex.EncodeToString(h.Sum(nil)), nil
}

func fingerprintOf(ctx context.Context, path string) (string, error) {
	f, err := storage.Open(ctx, path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return Fingerprint(f)
}

// targetMeta reads the source fingerprint and target a target file was made
// from ("" if the file is missing, unreadable or was not written by rekey).
func targetMeta(ctx context.Context, path string) (fp, target string) {
	if ok, err := storage.Exists(ctx, path); err != nil || !ok {
		return "", ""
	}
	pf, f, err := openParquet(ctx, path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	fp, _ = pf.Lookup(MetaSourceFingerprint)
	target, _ = pf.Lookup(MetaTarget)
	return fp, target
}

func (s *Spec) targetID() string { return redactKEK(s.TargetKEK) + " " + s.TargetWrap }

// unchanged reports whether an incremental run can skip the unit whose
// source is src and target dst, and the source's fingerprint either way.
func unchanged(ctx context.Context, spec *Spec, src, dst string) (bool, string, error) {
	fp, err := fingerprintOf(ctx, src)
	if err != nil {
		return false, "", err
	}
	if !spec.Incremental || fp == "" {
		return false, fp, nil
	}
	tfp, target := targetMeta(ctx, dst)
	return tfp == fp && target == spec.targetID(), fp, nil
}

// skipUnchanged writes the unit's ledger part (one skipped `file` row) and
// returns its result.
func skipUnchanged(ctx context.Context, spec *Spec, part, src, dst, fp string) (UnitResult, error) {
	row := schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitFile, Source: src, Target: dst,
		Status: schemas.StatusSkipped, Error: "unchanged since the run that wrote the target (incremental)", Checksum: fp, At: now()}
	if err := ledger.WritePart(ctx, part, []schemas.LedgerRow{row}); err != nil {
		return UnitResult{}, err
	}
	res := UnitResult{Unit: src}
	res.Totals.Files = 1
	res.add(&row)
	return res, nil
}

// outputMeta is the key-value metadata of an output file.
func outputMeta(spec *Spec, fp string) []parquet.WriterOption {
	return []parquet.WriterOption{parquet.KeyValueMetadata(MetaSourceFingerprint, fp), parquet.KeyValueMetadata(MetaRunID, spec.RunID),
		parquet.KeyValueMetadata(MetaTarget, spec.targetID())}
}
