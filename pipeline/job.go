package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"maps"

	"gopkg.in/yaml.v3"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/schemas/objfmt"
	"rekey/transforms"
)

// Side is one end of a migration.
type Side struct {
	Data string `yaml:"data,omitempty"` // record dataset folder (reencrypt, verify)
	DEKs string `yaml:"deks"`           // DEK table folder
	KEK  string `yaml:"kek"`            // pkcs11: URI with module-path and pin-source
	Wrap string `yaml:"wrap,omitempty"` // wrap mechanism (target: used to wrap; source: checked)
	// Format is the cell format of the record files (schemas/format:
	// rekey-v1, the default, or aes-gcm) and FormatOptions its options.
	Format        string            `yaml:"format,omitempty"`
	FormatOptions map[string]string `yaml:"format_options,omitempty"`
	// HSMRate overrides the job's hsm_rate for this side's custodian
	// (operations per second per worker process; 0: the job's hsm_rate).
	HSMRate float64 `yaml:"hsm_rate,omitempty"`
}

// Columns names the record columns rekey reads.
type Columns struct {
	Encrypted []string `yaml:"encrypted,omitempty"`
	DEKID     string   `yaml:"dek_id,omitempty"`
	RecordID  string   `yaml:"record_id,omitempty"`
}

// Job is a rekey job file (format version 1).
type Job struct {
	Version   int     `yaml:"version"`
	Mode      string  `yaml:"mode"`
	RunID     string  `yaml:"run_id,omitempty"`
	Source    Side    `yaml:"source"`
	Target    Side    `yaml:"target"`
	Ledger    string  `yaml:"ledger"`
	Columns   Columns `yaml:"columns,omitempty"`
	Workers   int     `yaml:"workers,omitempty"`
	DEKSource string  `yaml:"dek_source,omitempty"`
	Resume    bool    `yaml:"resume,omitempty"`
	// Incremental skips source files whose target was made from the same
	// content by an earlier run (scheduled runs).
	Incremental bool `yaml:"incremental,omitempty"`
	CacheSize   int  `yaml:"cache_size,omitempty"`
	MaxCell     int  `yaml:"max_cell_bytes,omitempty"`
	// HSMRate caps operations per second per HSM in each worker process.
	HSMRate float64 `yaml:"hsm_rate,omitempty"`
	// MaxFailures stops the run past this many failed records/DEKs/files:
	// a count ("100"), a percentage ("0.1%"), or "0" to stop at the first.
	MaxFailures string `yaml:"max_failures,omitempty"`
	// VerifyBeforeCommit (default true) unwraps every new wrapped DEK with
	// the target and decrypts every new cell again before committing.
	// Turning it off is for measuring what it costs, not for production.
	VerifyBeforeCommit *bool `yaml:"verify_before_commit,omitempty"`
	// PlanSamples is how many cells of each record file `rekey plan` opens
	// with the source keys before a run (default 3; negative: none).
	PlanSamples int `yaml:"plan_samples,omitempty"`
	// SuccessMarker (default true) writes an empty _SUCCESS into the
	// target folders when a run completes with nothing failed, for
	// downstream jobs that wait for one (Spark, Hadoop, Airflow sensors);
	// a run removes a stale one before it starts.
	SuccessMarker *bool `yaml:"success_marker,omitempty"`
}

// WantsSuccessMarker reports whether a successful run writes _SUCCESS.
func (j *Job) WantsSuccessMarker() bool { return j.SuccessMarker == nil || *j.SuccessMarker }

// MaxJobFileBytes caps a job file.
const MaxJobFileBytes = 1 << 20

// ParseJob reads a job file. Unknown keys are errors, so a typo does not
// silently fall back to a default.
func ParseJob(b []byte) (*Job, error) {
	if len(b) > MaxJobFileBytes {
		return nil, fmt.Errorf("job file is %d bytes, limit %d", len(b), MaxJobFileBytes)
	}
	var j Job
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&j); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("job file is empty")
		}
		return nil, fmt.Errorf("job file: %s", explainYAML(err))
	}
	return &j, nil
}

// yamlUnknown is yaml.v3's message for an unknown key.
var yamlUnknown = regexp.MustCompile(`field (\S+) not found in type pipeline\.(\w+)`)

// explainYAML rewrites yaml.v3's messages about unknown keys in the job
// file's terms: where the key was, the keys allowed there, and the nearest
// one ("sorce": did you mean "source"?), instead of Go type names.
func explainYAML(err error) string {
	where := map[string]reflect.Type{"Job": reflect.TypeOf(Job{}), "Side": reflect.TypeOf(Side{}), "Columns": reflect.TypeOf(Columns{})}
	names := map[string]string{"Job": "at the top level", "Side": "in source/target", "Columns": "in columns"}
	return yamlUnknown.ReplaceAllStringFunc(err.Error(), func(m string) string {
		sub := yamlUnknown.FindStringSubmatch(m)
		key, typ := sub[1], sub[2]
		t, ok := where[typ]
		if !ok {
			return fmt.Sprintf("unknown key %q", key)
		}
		var keys []string
		for i := 0; i < t.NumField(); i++ {
			if k, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); k != "" && k != "-" {
				keys = append(keys, k)
			}
		}
		msg := fmt.Sprintf("unknown key %q %s", key, names[typ])
		best, bestD := "", 3
		for _, k := range keys {
			if d := editDistance(key, k); d < bestD {
				best, bestD = k, d
			}
		}
		if best != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", best)
		}
		return msg + "; known keys there: " + strings.Join(keys, ", ")
	})
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// Defaults fills what the user left out.
func (j *Job) Defaults() {
	if j.Version == 0 {
		j.Version = 1
	}
	if len(j.Columns.Encrypted) == 0 {
		j.Columns.Encrypted = []string{"payload"}
	}
	if j.Columns.DEKID == "" {
		j.Columns.DEKID = "dek_id"
	}
	if j.Columns.RecordID == "" {
		j.Columns.RecordID = "id"
	}
	if j.DEKSource == "" {
		j.DEKSource = "hsm"
	}
	if j.RunID == "" {
		j.RunID = time.Now().UTC().Format("20060102T150405Z")
	}
	if j.Mode == schemas.ModeRewrap && j.Target.Format == "" && j.Target.FormatOptions == nil {
		// A rewrap keeps the format: the data is not touched.
		j.Target.Format, j.Target.FormatOptions = j.Source.Format, j.Source.FormatOptions
	}
}

// formats validates source.format and target.format.
func (j *Job) formats() (src, dst format.Format, err error) {
	if src, err = format.New(j.Source.Format, j.Source.FormatOptions); err != nil {
		return nil, nil, cfgErr("source.format", "%v", err)
	}
	if dst, err = format.New(j.Target.Format, j.Target.FormatOptions); err != nil {
		return nil, nil, cfgErr("target.format", "%v", err)
	}
	return src, dst, nil
}

var runIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ConfigError is a job that cannot run as written. It names the field.
type ConfigError struct {
	Field string
	Msg   string
}

func (e *ConfigError) Error() string { return fmt.Sprintf("job: %s: %s", e.Field, e.Msg) }

func cfgErr(field, format string, a ...any) error {
	return &ConfigError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// Validate checks the job before anything is touched. Call Defaults first.
func (j *Job) Validate() error {
	if j.Version != 1 {
		return cfgErr("version", "%d is not a job file version this rekey reads (1)", j.Version)
	}
	switch j.Mode {
	case schemas.ModeRewrap, schemas.ModeReencrypt:
	case "":
		return cfgErr("mode", "missing: set mode: rewrap (DEKs only, data untouched) or mode: reencrypt (every record re-encrypted)")
	default:
		return cfgErr("mode", "%q is not a mode (rewrap or reencrypt)", j.Mode)
	}
	if !runIDRe.MatchString(j.RunID) {
		return cfgErr("run_id", "%q: use letters, digits, '.', '_' and '-' (it becomes a folder name)", j.RunID)
	}
	if objfmt.Known(j.Source.Format) || objfmt.Known(j.Target.Format) {
		if err := j.validateObjects(); err != nil {
			return err
		}
	} else if err := j.validateLayout(); err != nil {
		return err
	}
	for f, k := range map[string]string{"source.kek": j.Source.KEK, "target.kek": j.Target.KEK} {
		scheme, _, _ := strings.Cut(k, ":")
		if !slices.Contains(keys.Schemes(), scheme) {
			return cfgErr(f, "%q is not a key URI this rekey knows (schemes: %s); expected pkcs11:token=<label>;object=<key label>?pin-source=env:VAR", redact(k), strings.Join(keys.Schemes(), ", "))
		}
		if strings.Contains(k, "pin-value=") {
			return cfgErr(f, "pin-value is not accepted: PINs never go in job files or on command lines; use pin-source=env:VAR or pin-source=file:/path")
		}
	}
	if j.Target.Wrap == schemas.WrapRSAPKCS1 && j.Source.Format != objfmt.FormatOSS {
		return cfgErr("target.wrap", "rsa-pkcs1 (PKCS#1 v1.5) is open to padding-oracle attacks: rekey writes it only for oss-cse objects, whose library reads nothing else; use rsa-oaep-sha256 or rsa-oaep-sha1")
	}
	for f, w := range map[string]string{"source.wrap": j.Source.Wrap, "target.wrap": j.Target.Wrap} {
		if w != "" && !keys.KnownMechanism(w) {
			return cfgErr(f, "%q is not a wrap mechanism (%s)", w, strings.Join(keys.Mechanisms(), ", "))
		}
	}
	if j.Workers < 0 {
		return cfgErr("workers", "%d: must be 0 (one per CPU) or more", j.Workers)
	}
	if j.DEKSource != "hsm" && j.DEKSource != "crypto-rand" {
		return cfgErr("dek_source", "%q: use hsm (the target HSM's RNG) or crypto-rand", j.DEKSource)
	}
	if j.MaxCell < 0 || j.MaxCell > schemas.MaxCellBytes {
		return cfgErr("max_cell_bytes", "%d: must be between 0 (default %d) and %d", j.MaxCell, schemas.MaxCellBytes, schemas.MaxCellBytes)
	}
	for _, r := range []struct {
		field string
		rate  float64
	}{{"hsm_rate", j.HSMRate}, {"source.hsm_rate", j.Source.HSMRate}, {"target.hsm_rate", j.Target.HSMRate}} {
		if r.rate < 0 {
			return cfgErr(r.field, "%g: must be 0 (the custodian's default: unlimited for PKCS#11, the published quota for a KMS) or a positive number of operations per second", r.rate)
		}
	}
	if j.Source.HSMRate > 0 && j.Target.HSMRate > 0 && j.Source.HSMRate != j.Target.HSMRate && j.sameCustodian() {
		return cfgErr("target.hsm_rate", "%g differs from source.hsm_rate %g, but source.kek and target.kek are on one custodian, which has one budget: set one of them (it applies to both) or hsm_rate", j.Target.HSMRate, j.Source.HSMRate)
	}
	if _, err := transforms.ParseBudget(j.MaxFailures); err != nil {
		return cfgErr("max_failures", "%v", err)
	}
	seen := map[string]bool{}
	for _, c := range j.Columns.Encrypted {
		if c == "" || seen[c] {
			return cfgErr("columns.encrypted", "empty or repeated column name %q", c)
		}
		seen[c] = true
	}
	if seen[j.Columns.DEKID] || seen[j.Columns.RecordID] || j.Columns.DEKID == j.Columns.RecordID {
		return cfgErr("columns", "dek_id column %q, record_id column %q and the encrypted columns must all differ", j.Columns.DEKID, j.Columns.RecordID)
	}
	// Nothing rekey writes may be inside what it reads (or contain it).
	reads := map[string]string{}
	if j.Source.DEKs != "" {
		reads["source.deks"] = j.Source.DEKs
	}
	if j.Source.Data != "" {
		reads["source.data"] = j.Source.Data
	}
	writes := map[string]string{"ledger": j.Ledger}
	if j.Target.DEKs != "" {
		writes["target.deks"] = j.Target.DEKs
	}
	if j.Target.Data != "" {
		writes["target.data"] = j.Target.Data
	}
	for wf, w := range writes {
		for rf, r := range reads {
			if overlaps(w, r) {
				return cfgErr(wf, "%q overlaps %s %q: rekey never writes into (or around) its source; pick a separate folder", w, rf, r)
			}
		}
	}
	if j.Target.Data != "" && j.Target.DEKs != "" && overlaps(j.Target.Data, j.Target.DEKs) {
		return cfgErr("target.deks", "%q overlaps target.data %q: keep the DEK table beside the data, not inside it", j.Target.DEKs, j.Target.Data)
	}
	for _, loc := range []string{j.Source.DEKs, j.Source.Data, j.Target.DEKs, j.Target.Data, j.Ledger} {
		if loc == "" {
			continue
		}
		if _, err := storage.For(loc); err != nil {
			return cfgErr("location", "%v", err)
		}
	}
	return nil
}

// overlaps reports whether one location is equal to or inside the other.
func overlaps(a, b string) bool {
	na, nb := normLoc(a), normLoc(b)
	return na == nb || strings.HasPrefix(na, nb+"/") || strings.HasPrefix(nb, na+"/")
}

func normLoc(loc string) string {
	if storage.Scheme(loc) != "" {
		base, _ := storage.SplitQuery(loc)
		return strings.TrimRight(base, "/")
	}
	abs, err := filepath.Abs(loc)
	if err != nil {
		return filepath.Clean(loc)
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	return filepath.ToSlash(abs)
}

// sameCustodian reports whether source.kek and target.kek are on one
// custodian (one rate budget).
func (j *Job) sameCustodian() bool {
	s, err1 := keys.ParseRef(j.Source.KEK)
	t, err2 := keys.ParseRef(j.Target.KEK)
	return err1 == nil && err2 == nil && s.Custodian != "" && s.Custodian == t.Custodian
}

// Rates are the operations per second the run allows the source's and the
// target's custodian, and where each comes from ("source.hsm_rate",
// "target.hsm_rate", "hsm_rate"; "" for 0: the custodian's default). A
// side's own rate wins over the job's; one custodian has one budget, so a
// rate set on one side applies to the other side too when both are on it.
func (j *Job) Rates() (src, dst float64, srcFrom, dstFrom string) {
	pick := func(own float64, field string) (float64, string) {
		if own > 0 {
			return own, field
		}
		if j.HSMRate > 0 {
			return j.HSMRate, "hsm_rate"
		}
		return 0, ""
	}
	src, srcFrom = pick(j.Source.HSMRate, "source.hsm_rate")
	dst, dstFrom = pick(j.Target.HSMRate, "target.hsm_rate")
	if j.sameCustodian() {
		switch {
		case j.Source.HSMRate > 0:
			dst, dstFrom = src, srcFrom
		case j.Target.HSMRate > 0:
			src, srcFrom = dst, dstFrom
		}
	}
	return src, dst, srcFrom, dstFrom
}

// Spec turns a validated job into the DoFns' configuration.
func (j *Job) Spec() transforms.Spec {
	srcRate, dstRate, _, _ := j.Rates()
	budget, _ := transforms.ParseBudget(j.MaxFailures) // checked by Validate
	return transforms.Spec{
		RunID: j.RunID, Mode: j.Mode,
		SourceFormat: j.Source.Format, SourceFormatOptions: j.Source.FormatOptions,
		TargetFormat: j.Target.Format, TargetFormatOptions: j.Target.FormatOptions,
		SourceData: j.Source.Data, SourceDEKs: j.Source.DEKs, SourceKEK: j.Source.KEK, SourceWrap: j.Source.Wrap,
		TargetData: j.Target.Data, TargetDEKs: j.Target.DEKs, TargetKEK: j.Target.KEK, TargetWrap: j.Target.Wrap,
		Ledger: j.Ledger, Encrypted: j.Columns.Encrypted, DEKColumn: j.Columns.DEKID, IDColumn: j.Columns.RecordID,
		Workers: j.Workers, DEKSource: j.DEKSource, Resume: j.Resume, CacheSize: j.CacheSize, MaxCellBytes: j.MaxCell,
		HSMRate: j.HSMRate, SourceRate: srcRate, TargetRate: dstRate, MaxFailures: budget, Incremental: j.Incremental, SkipVerify: j.VerifyBeforeCommit != nil && !*j.VerifyBeforeCommit,
	}
}

// VerifySpec is the configuration of a verify of j's target (without a
// source: the caller adds it, see `rekey verify`), with j's columns and
// tuning. report is where its JSON report goes.
func (j *Job) VerifySpec(report string) transforms.VerifySpec {
	_, dstRate, _, _ := j.Rates()
	return transforms.VerifySpec{
		TargetData: j.Target.Data, TargetDEKs: j.Target.DEKs, TargetKEK: j.Target.KEK, TargetWrap: j.Target.Wrap,
		TargetFormat: j.Target.Format, TargetFormatOptions: j.Target.FormatOptions, SourceTable: j.sourceTable(),
		Encrypted: j.Columns.Encrypted, DEKColumn: j.Columns.DEKID, IDColumn: j.Columns.RecordID,
		Workers: j.Workers, CacheSize: j.CacheSize, MaxCellBytes: j.MaxCell, HSMRate: dstRate,
		Report: report,
	}
}

// sourceTable is the layout of the source DEK table (zero: rekey's own).
func (j *Job) sourceTable() format.Table {
	f, err := format.New(j.Source.Format, j.Source.FormatOptions)
	if err != nil {
		return format.Table{}
	}
	return format.TableOf(f)
}

// redact is a key reference safe for messages.
func redact(uri string) string { return keys.Redact(uri) }

// validateCellKeys checks a job whose source or target cells carry their
// own wrapped DEKs (tink-envelope): no DEK tables on either side, and a
// reencrypt stays in that format (under target.kek).
func (j *Job) validateCellKeys(srcFmt, dstFmt format.Format) error {
	if srcFmt.Keys() != format.KeyCell {
		return cfgErr("target.format", "reencrypt from %s into %s (DEKs inside the cells) is not supported yet: re-encrypt %s data into rekey-v1 or aes-gcm", srcFmt.Name(), dstFmt.Name(), srcFmt.Name())
	}
	if j.Source.DEKs != "" {
		return cfgErr("source.deks", "%s cells carry their own wrapped DEKs: there is no source DEK table; remove source.deks", srcFmt.Name())
	}
	if j.Mode == schemas.ModeReencrypt && dstFmt.Keys() == format.KeyTable {
		// Into a DEK table format: one fresh DEK per record file.
		if j.Target.DEKs == "" {
			return cfgErr("target.deks", "missing: a reencrypt of %s cells into %s writes one new DEK per record file to a DEK table", srcFmt.Name(), dstFmt.Name())
		}
		return nil
	}
	if j.Target.DEKs != "" {
		return cfgErr("target.deks", "%s cells carry their own wrapped DEKs: the new ones go into the cells, not a DEK table; remove target.deks", srcFmt.Name())
	}
	if j.Mode == schemas.ModeReencrypt {
		if dstFmt.Keys() != format.KeyCell {
			return cfgErr("target.format", "reencrypt of %s data into %s (keys in a column) is not supported yet: set target.format: %s (fresh DEKs in the cells) or a format with keys in a DEK table (rekey-v1), or use mode: rewrap", srcFmt.Name(), dstFmt.Name(), srcFmt.Name())
		}
		if c, ok := dstFmt.(interface{ CanSeal() error }); ok {
			if err := c.CanSeal(); err != nil {
				return cfgErr("target.format_options", "%v", err)
			}
		}
	}
	return nil
}

// validateLayout checks a job on record files: its cell formats, where
// its keys are, and which locations it needs.
func (j *Job) validateLayout() error {
	srcFmt, dstFmt, err := j.formats()
	if err != nil {
		return err
	}
	req := map[string]string{"source.deks": j.Source.DEKs, "source.kek": j.Source.KEK, "target.deks": j.Target.DEKs, "target.kek": j.Target.KEK, "ledger": j.Ledger}
	need := []string{"source.deks", "source.kek", "target.deks", "target.kek", "ledger"}
	colKeys := srcFmt.Keys() == format.KeyColumn
	if srcFmt.Keys() == format.KeyCell || dstFmt.Keys() == format.KeyCell {
		if err := j.validateCellKeys(srcFmt, dstFmt); err != nil {
			return err
		}
		need = slices.DeleteFunc(need, func(f string) bool { return f == "source.deks" || f == "target.deks" && j.Target.DEKs == "" })
	} else if colKeys {
		// The wrapped keys are in the records: no source DEK table.
		need = slices.DeleteFunc(need, func(f string) bool { return f == "source.deks" || f == "target.deks" && j.Mode == schemas.ModeRewrap })
		if j.Source.DEKs != "" {
			return cfgErr("source.deks", "source.format keeps wrapped keys in column %q: there is no source DEK table; remove source.deks", srcFmt.KeyColumn())
		}
		if j.Mode == schemas.ModeRewrap && j.Target.DEKs != "" {
			return cfgErr("target.deks", "a rewrap of keys kept in column %q rewrites that column in target.data; remove target.deks", srcFmt.KeyColumn())
		}
	}
	for _, f := range need {
		if req[f] == "" {
			return cfgErr(f, "missing")
		}
	}
	tagCol := func(f format.Format) string {
		if t, ok := f.(interface{ TagColumn() string }); ok {
			return t.TagColumn()
		}
		return ""
	}
	if c := tagCol(srcFmt); c != "" && len(j.Columns.Encrypted) > 1 {
		return cfgErr("source.format_options", "tag_column %q holds the tags of one encrypted column; columns.encrypted names %d: migrate them in separate jobs, one column each", c, len(j.Columns.Encrypted))
	}
	if c := tagCol(dstFmt); c != "" && j.Mode == schemas.ModeReencrypt {
		switch {
		case srcFmt.Keys() == format.KeyCell:
			return cfgErr("target.format_options", "tag_column %q: a reencrypt of %s cells into a format with tag_column is not supported yet: drop tag_column and name tag in the layout (e.g. nonce,ciphertext,tag)", c, srcFmt.Name())
		case len(j.Columns.Encrypted) > 1:
			return cfgErr("target.format_options", "tag_column %q holds the tags of one encrypted column; columns.encrypted names %d: migrate them in separate jobs, one column each", c, len(j.Columns.Encrypted))
		}
	}
	if j.Mode == schemas.ModeRewrap && (j.Target.Format != j.Source.Format || !maps.Equal(j.Target.FormatOptions, j.Source.FormatOptions)) {
		return cfgErr("target.format", "a rewrap keeps the cell format (the data is not re-encrypted): remove target.format, or use mode: reencrypt to convert %s to %s", srcFmt.Name(), dstFmt.Name())
	}
	if dstFmt.Keys() == format.KeyColumn && j.Mode == schemas.ModeReencrypt {
		return cfgErr("target.format", "reencrypt into a format that keeps wrapped keys in a column is not supported yet: re-encrypt into rekey-v1 or aes-gcm with keys: table")
	}
	if srcFmt.Keys() == format.KeyCell {
		if j.Source.Data == "" {
			return cfgErr("source.data", "missing: the wrapped DEKs are inside the cells of the records")
		}
		if j.Target.Data == "" {
			return cfgErr("target.data", "missing: the records are written again with new cells (a rewrap changes only each cell's wrapped DEK)")
		}
	} else if j.Mode == schemas.ModeRewrap && colKeys {
		if j.Source.Data == "" {
			return cfgErr("source.data", "missing: the wrapped keys are in column %q of the records", srcFmt.KeyColumn())
		}
		if j.Target.Data == "" {
			return cfgErr("target.data", "missing: a rewrap of keys in column %q writes the records again with only that column changed", srcFmt.KeyColumn())
		}
	} else if j.Mode == schemas.ModeReencrypt {
		if j.Source.Data == "" {
			return cfgErr("source.data", "missing: reencrypt reads a record dataset")
		}
		if j.Target.Data == "" {
			return cfgErr("target.data", "missing: reencrypt writes a record dataset")
		}
	} else if j.Target.Data != "" && !colKeys {
		return cfgErr("target.data", "rewrap does not write records (the data stays as it is); remove target.data or use mode: reencrypt")
	}
	return nil
}

// validateObjects checks a job on objects whose wrapped keys are in their
// metadata (source.format s3ec or oss-cse).
func (j *Job) validateObjects() error {
	if !objfmt.Known(j.Source.Format) {
		return cfgErr("target.format", "%s is an object format: a reencrypt from %q record files into objects is not supported", j.Target.Format, j.Source.Format)
	}
	if j.Target.Format == "" {
		j.Target.Format = j.Source.Format
	}
	if j.Target.Format != j.Source.Format {
		return cfgErr("target.format", "%q: objects stay in their library's format (%s); converting between libraries is not supported yet", j.Target.Format, j.Source.Format)
	}
	if j.Source.Format == objfmt.FormatOSS && strings.HasPrefix(j.Target.KEK, "pkcs11:") && j.Target.Wrap == "" {
		j.Target.Wrap = schemas.WrapRSAPKCS1 // OSS's RSA/NONE/PKCS1Padding
	}
	// The custodians the library's own readers can use: anything else
	// would be a wrap the application cannot unwrap, written in place.
	for f, k := range map[string]string{"source.kek": j.Source.KEK, "target.kek": j.Target.KEK} {
		scheme, _, _ := strings.Cut(k, ":")
		switch {
		case j.Source.Format == objfmt.FormatS3EC && scheme != "awskms":
			return cfgErr(f, "%q: S3 Encryption Client objects (kms+context, kms) are wrapped by AWS KMS keys: use an awskms: reference", redact(k))
		case j.Source.Format == objfmt.FormatOSS && scheme != "pkcs11" && !strings.HasPrefix(scheme, "alikms"):
			return cfgErr(f, "%q: OSS client-side encryption objects are wrapped by RSA keys (pkcs11:) or Alibaba Cloud KMS (alikms:)", redact(k))
		}
	}
	if j.Source.Format == objfmt.FormatOSS && strings.HasPrefix(j.Target.KEK, "pkcs11:") && j.Target.Wrap != schemas.WrapRSAPKCS1 {
		return cfgErr("target.wrap", "%q: OSS reads RSA/NONE/PKCS1Padding only: the target wrap of an oss-cse job on a PKCS#11 key is rsa-pkcs1 (the default)", j.Target.Wrap)
	}
	if _, err := objfmt.ParseOptions(j.Source.Format, j.Source.FormatOptions); err != nil {
		return cfgErr("source.format_options", "%v", err)
	}
	for f, v := range map[string]string{"source.data": j.Source.Data, "source.kek": j.Source.KEK, "target.kek": j.Target.KEK, "ledger": j.Ledger} {
		if v == "" {
			return cfgErr(f, "missing")
		}
	}
	if j.Source.DEKs != "" || j.Target.DEKs != "" {
		return cfgErr("source.deks", "objects keep their wrapped keys in their metadata: remove source.deks and target.deks")
	}
	if _, err := storage.Objects(j.Source.Data); err != nil {
		return cfgErr("source.data", "%v", err)
	}
	switch j.Mode {
	case schemas.ModeRewrap:
		if j.Target.Data != "" {
			return cfgErr("target.data", "a rewrap of objects replaces each object's metadata in place (a server-side copy onto itself; the body is not read): remove target.data, or use mode: reencrypt to write new objects there")
		}
	case schemas.ModeReencrypt:
		if j.Target.Data == "" {
			return cfgErr("target.data", "missing: a reencrypt writes new objects (an object store location other than source.data)")
		}
		if _, err := storage.Objects(j.Target.Data); err != nil {
			return cfgErr("target.data", "%v", err)
		}
	}
	return nil
}
