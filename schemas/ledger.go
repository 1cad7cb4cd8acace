package schemas

import "time"

// Ledger vocabulary.
const (
	ModeRewrap    = "rewrap"
	ModeReencrypt = "reencrypt"

	UnitDEK    = "dek"
	UnitRecord = "record"
	UnitFile   = "file"
	UnitKey    = "key" // rekey keys: one key moved between tokens
	// UnitObject is one object of an object store whose wrapped key is in
	// its metadata (S3 Encryption Client, OSS client-side encryption).
	UnitObject = "object"

	StatusMigrated = "migrated"
	StatusSkipped  = "skipped"
	StatusFailed   = "failed"
)

// LedgerRow is one row of the migration ledger (format version 1). Optional
// columns are written as NULL when empty. Columns whose values repeat from
// row to row (run, unit, files, DEKs, KEKs, status) are dictionary-encoded;
// record_id and checksum, unique per row, are not.
type LedgerRow struct {
	RunID     string    `parquet:"run_id,dict"`
	Mode      string    `parquet:"mode,dict"`
	Unit      string    `parquet:"unit,dict"`
	Source    string    `parquet:"source,dict"`
	Target    string    `parquet:"target,optional,dict"`
	RecordID  string    `parquet:"record_id,optional"`
	DEKID     string    `parquet:"dek_id,optional,dict"`
	NewDEKID  string    `parquet:"new_dek_id,optional,dict"`
	SourceKEK string    `parquet:"source_kek,optional,dict"`
	TargetKEK string    `parquet:"target_kek,optional,dict"`
	Status    string    `parquet:"status,dict"`
	Error     string    `parquet:"error,optional,dict"`
	Bytes     int64     `parquet:"bytes"`
	Checksum  string    `parquet:"checksum,optional"`
	At        time.Time `parquet:"at,timestamp(microsecond)"`
	// Proof (unit dek) says how the unwrapped source DEK was shown to be the
	// right key before its new wrap was committed: ProofKCV, ProofCell or
	// ProofNone; empty when no proof was reached (e.g. the unwrap failed).
	Proof string `parquet:"proof,optional,dict"`
	// Path (unit dek, rewrap) says where the DEK was rewrapped: PathRekey
	// (unwrapped into rekey's memory and wrapped again) or PathCustodian
	// (rewrapped inside the custodian: the DEK never reached rekey);
	// empty in rows of other units and in ledgers written before it.
	Path string `parquet:"path,optional,dict"`
	// VersionID, ETagBefore and ETagAfter (unit object) are the object's
	// version (where the bucket keeps versions; the version read) and its
	// ETag before and after the run changed it.
	VersionID  string `parquet:"version_id,optional"`
	ETagBefore string `parquet:"etag_before,optional"`
	ETagAfter  string `parquet:"etag_after,optional"`
}

// RecordChecksumPrefix starts the checksum of a record row: SHA-256 over
// each new cell's length (4 bytes, big-endian) and AEAD tag, in the order
// of the job's encrypted columns (docs/FORMAT.md section 3). Ledgers
// written before it hold a plain hex SHA-256 of the cells themselves.
const RecordChecksumPrefix = "sha256-tags:"

// Rewrap paths (LedgerRow.Path).
const (
	PathRekey     = "rekey"
	PathCustodian = "custodian"
)

// ManifestFormat identifies the JSON run manifest.
const ManifestFormat = "rekey-manifest/1"

// Totals are the counts of a run; the manifest and the summary table print
// them. Failed counts every failed ledger row, whatever its unit.
type Totals struct {
	Files int64 `json:"files"`
	// DEKTableFiles counts the DEK table files among Files (the units that
	// rewrap or replace a DEK table file); the rest are record files.
	DEKTableFiles   int64 `json:"dek_table_files,omitempty"`
	FilesFailed     int64 `json:"files_failed"`
	FilesSkipped    int64 `json:"files_skipped"`
	DEKs            int64 `json:"deks"`
	DEKsMigrated    int64 `json:"deks_migrated"`
	DEKsSkipped     int64 `json:"deks_skipped"`
	DEKsFailed      int64 `json:"deks_failed"`
	Records         int64 `json:"records"`
	RecordsMigrated int64 `json:"records_migrated"`
	RecordsFailed   int64 `json:"records_failed"`
	Failed          int64 `json:"failed"`
	Bytes           int64 `json:"bytes"`
	LedgerRows      int64 `json:"ledger_rows"`
	// Objects (unit object): objects of an object store, and what became
	// of them.
	Objects         int64 `json:"objects,omitempty"`
	ObjectsMigrated int64 `json:"objects_migrated,omitempty"`
	ObjectsSkipped  int64 `json:"objects_skipped,omitempty"`
	ObjectsFailed   int64 `json:"objects_failed,omitempty"`
}

// Add accumulates o into t.
func (t *Totals) Add(o Totals) {
	t.Files += o.Files
	t.DEKTableFiles += o.DEKTableFiles
	t.FilesFailed += o.FilesFailed
	t.FilesSkipped += o.FilesSkipped
	t.DEKs += o.DEKs
	t.DEKsMigrated += o.DEKsMigrated
	t.DEKsSkipped += o.DEKsSkipped
	t.DEKsFailed += o.DEKsFailed
	t.Records += o.Records
	t.RecordsMigrated += o.RecordsMigrated
	t.RecordsFailed += o.RecordsFailed
	t.Failed += o.Failed
	t.Bytes += o.Bytes
	t.LedgerRows += o.LedgerRows
	t.Objects += o.Objects
	t.ObjectsMigrated += o.ObjectsMigrated
	t.ObjectsSkipped += o.ObjectsSkipped
	t.ObjectsFailed += o.ObjectsFailed
}

// Count adds one ledger row to t.
func (t *Totals) Count(r *LedgerRow) {
	t.LedgerRows++
	switch r.Unit {
	case UnitDEK:
		t.DEKs++
		switch r.Status {
		case StatusMigrated:
			t.DEKsMigrated++
		case StatusSkipped:
			t.DEKsSkipped++
		case StatusFailed:
			t.DEKsFailed++
		}
	case UnitRecord:
		t.Records++
		switch r.Status {
		case StatusMigrated:
			t.RecordsMigrated++
		case StatusFailed:
			t.RecordsFailed++
		}
	case UnitObject:
		t.Objects++
		switch r.Status {
		case StatusMigrated:
			t.ObjectsMigrated++
		case StatusSkipped:
			t.ObjectsSkipped++
		case StatusFailed:
			t.ObjectsFailed++
		}
	case UnitFile:
		switch r.Status {
		case StatusFailed:
			t.FilesFailed++
		case StatusSkipped:
			t.FilesSkipped++
		}
	}
	if r.Status == StatusMigrated {
		t.Bytes += r.Bytes
	}
	if r.Status == StatusFailed {
		t.Failed++
	}
}

// Manifest is the per-run completion report written beside the ledger as
// run_id=<id>/_manifest.json, modelled on the S3 Batch Operations completion
// report: what ran, on what, and how many units succeeded or failed.
type Manifest struct {
	Format    string        `json:"format"`
	RunID     string        `json:"run_id"`
	Mode      string        `json:"mode"`
	Status    string        `json:"status"` // "succeeded" or "completed_with_failures"
	Source    ManifestSide  `json:"source"`
	Target    ManifestSide  `json:"target"`
	Finished  time.Time     `json:"finished"`
	Totals    Totals        `json:"totals"`
	Failures  []FailureNote `json:"first_failures,omitempty"`
	LedgerDir string        `json:"ledger"`
}

// ManifestSide names the locations and KEK of one side of a run.
type ManifestSide struct {
	Data string `json:"data,omitempty"`
	DEKs string `json:"deks"`
	KEK  string `json:"kek"`
	Wrap string `json:"wrap,omitempty"`
}

// FailureNote is one sample failure kept in the manifest (the ledger has all).
type FailureNote struct {
	Source   string `json:"source"`
	RecordID string `json:"record_id,omitempty"`
	DEKID    string `json:"dek_id,omitempty"`
	Error    string `json:"error"`
}
