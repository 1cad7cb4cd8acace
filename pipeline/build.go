package pipeline

import (
	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"rekey/schemas"
	"rekey/transforms"
)

// Build adds a migration run to the pipeline at s: rewrap or reencrypt,
// ending with the run manifest.
func Build(s beam.Scope, spec transforms.Spec) {
	// The per-process counters (progress, failure budget) start at zero
	// for every run built in this process.
	transforms.ResetProgress()
	s = s.Scope("rekey")
	var results beam.PCollection
	if spec.Objects() {
		// Objects with their wrapped keys in their metadata.
		batches := transforms.ListObjects(s.Scope("Objects"), spec.SourceData)
		transforms.WriteManifest(s, spec, transforms.Objects(s, spec, batches))
		return
	}
	if spec.CellKeys() {
		// Every cell carries its own wrapped DEK (Tink's envelope).
		files := transforms.ListFiles(s.Scope("Records"), spec.SourceData)
		transforms.WriteManifest(s, spec, transforms.CellKeys(s, spec, files))
		return
	}
	if spec.ColumnKeys() {
		// The wrapped keys are in the records: no DEK table to read.
		files := transforms.ListFiles(s.Scope("Records"), spec.SourceData)
		switch spec.Mode {
		case schemas.ModeRewrap:
			results = transforms.RewrapKeyColumn(s, spec, files)
		case schemas.ModeReencrypt:
			results = transforms.Reencrypt(s, spec, files, beam.CreateList(s, []transforms.DEKMap{}))
		}
		transforms.WriteManifest(s, spec, results)
		return
	}
	dekFiles := transforms.ListFiles(s.Scope("DEKTable"), spec.SourceDEKs)
	switch spec.Mode {
	case schemas.ModeRewrap:
		// DEKs without a kcv are proven by opening a cell of source.data
		// (read only when a table lacks kcv; see transforms.SampleCells).
		samples := transforms.SampleCells(s, spec, dekFiles)
		results = transforms.RewrapDEKTables(s, spec, dekFiles, samples)
	case schemas.ModeReencrypt:
		maps, dekResults := transforms.MintDEKs(s, spec, dekFiles)
		files := transforms.ListFiles(s.Scope("Records"), spec.SourceData)
		recResults := transforms.Reencrypt(s, spec, files, maps)
		results = beam.Flatten(s, dekResults, recResults)
	}
	transforms.WriteManifest(s, spec, results)
}

// BuildVerify adds a verify: spec.TargetData and spec.TargetDEKs checked
// with spec.TargetKEK and, when spec.SourceDEKs (and spec.SourceData) are
// set, matched with that source as spec.Match says (rewrap or reencrypt;
// see transforms.Verify). The report goes to spec.Report.
func BuildVerify(s beam.Scope, spec transforms.VerifySpec) {
	s = s.Scope("rekey")
	results := transforms.Verify(s, spec)
	transforms.WriteVerifyReport(s, spec, results)
}

// BuildGen adds the synthetic dataset generator.
func BuildGen(s beam.Scope, spec transforms.GenSpec) {
	transforms.Generate(s.Scope("rekey"), spec)
}
