package transforms

import (
	"fmt"
	"runtime"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/schemas/objfmt"
	"rekey/transforms/ledger"
)

// Spec is the serialisable configuration every DoFn carries: locations, key
// references (which name PIN sources, never PINs) and column names.
type Spec struct {
	RunID string
	Mode  string

	SourceData string
	SourceDEKs string
	SourceKEK  string // full URI with module-path and pin-source
	SourceWrap string

	TargetData string
	TargetDEKs string
	TargetKEK  string
	TargetWrap string

	Ledger string

	// Cell formats (schemas/format) and their options; "" is rekey-v1.
	SourceFormat        string
	SourceFormatOptions map[string]string
	TargetFormat        string
	TargetFormatOptions map[string]string

	Encrypted []string
	DEKColumn string
	IDColumn  string

	Workers     int
	DEKSource   string // "hsm" or "crypto-rand"
	Resume      bool
	Incremental bool // skip units whose target was made from the same source content
	CacheSize   int
	HSMRate     float64 // HSM operations per second per HSM; 0 = the custodian's default
	// SourceRate and TargetRate are the rates of source.kek's and
	// target.kek's custodians (a side's own rate, else HSMRate).
	SourceRate, TargetRate float64
	MaxFailures            Budget // stop the run past this many failures
	MaxCellBytes           int
	RowBatch               int
	SkipVerify             bool // verify-before-commit off (benchmarks only)
}

// Formats configures the source and target cell formats.
func (s *Spec) Formats() (src, dst format.Format, err error) {
	if src, err = format.New(s.SourceFormat, s.SourceFormatOptions); err != nil {
		return nil, nil, fmt.Errorf("source.format: %w", err)
	}
	if dst, err = format.New(s.TargetFormat, s.TargetFormatOptions); err != nil {
		return nil, nil, fmt.Errorf("target.format: %w", err)
	}
	return src, dst, nil
}

// ColumnKeys reports whether the source keeps its wrapped keys in the
// record files, in a column or inside each cell (no source DEK table).
func (s *Spec) ColumnKeys() bool {
	f, err := format.New(s.SourceFormat, s.SourceFormatOptions)
	return err == nil && f.Keys() != format.KeyTable
}

// Objects reports whether the job migrates objects whose wrapped keys are
// in their metadata (source.format s3ec or oss-cse), not record files.
func (s *Spec) Objects() bool { return objfmt.Known(s.SourceFormat) }

// CellKeys reports whether each source cell carries its own wrapped DEK
// (Tink's envelope).
func (s *Spec) CellKeys() bool {
	f, err := format.New(s.SourceFormat, s.SourceFormatOptions)
	return err == nil && f.Keys() == format.KeyCell
}

func (s *Spec) workers() int {
	if s.Workers > 0 {
		return s.Workers
	}
	return runtime.NumCPU()
}

// KeyWorkers is how many custodian calls a stage keeps in flight: the
// job's --workers, or by default the larger of the CPUs and what the
// source's and target's schemes suggest (a KMS API answers in tens of
// milliseconds, so one call per CPU leaves its quota idle).
func (s *Spec) KeyWorkers() int {
	if s.Workers > 0 {
		return s.Workers
	}
	return max(runtime.NumCPU(), keys.DefaultConcurrency(s.SourceKEK), keys.DefaultConcurrency(s.TargetKEK))
}

// filesInFlight is how many record files a stage works on at once in one
// bundle (see flight): the job's --workers, or the number of CPUs.
func (s *Spec) filesInFlight() int { return s.workers() }

// batchBytes bounds the plaintext-sized bytes of one batch of records
// (see batchRows).
const batchBytes = 8 << 20

// batchRows is how many rows of row group g of pf one batch reads: the
// job's row_batch when set, otherwise up to limit rows and about
// batchBytes of data (a batch is held by the reader, the crypto and the
// writer at once, for every file in flight: 1,024 rows of 64 KiB cells
// were 64 MiB each).
func (s *Spec) batchRows(pf *parquet.File, g, limit int) int {
	if s.RowBatch > 0 {
		return limit
	}
	rgs := pf.Metadata().RowGroups
	if g >= len(rgs) || rgs[g].NumRows <= 0 || rgs[g].TotalByteSize <= 0 {
		return limit
	}
	perRow := max(rgs[g].TotalByteSize/rgs[g].NumRows, 1)
	return int(min(int64(limit), max(batchBytes/perRow, 16)))
}

func (s *Spec) rowBatch() int {
	if s.RowBatch > 0 {
		return s.RowBatch
	}
	return 1024
}

func (s *Spec) maxCell() int {
	if s.MaxCellBytes > 0 && s.MaxCellBytes < schemas.MaxCellBytes {
		return s.MaxCellBytes
	}
	return schemas.MaxCellBytes
}

// LedgerPart is where a unit's ledger rows go (see ledger.PartPath).
func (s *Spec) LedgerPart(kind, rel string) string {
	return ledger.PartPath(s.Ledger, s.RunID, kind, rel)
}
