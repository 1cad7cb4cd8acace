package pipeline

import (
	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"rekey/schemas"
	"rekey/transforms"
)

// Build adds a migration run to the pipeline at s: rewrap or reencrypt,
// ending with the run manifest.
func Build(s beam.Scope, spec transforms.Spec) {
	s = s.Scope("rekey")
	dekFiles := transforms.ListFiles(s.Scope("DEKTable"), spec.SourceDEKs)
	var results beam.PCollection
	switch spec.Mode {
	case schemas.ModeRewrap:
		results = transforms.RewrapDEKTables(s, spec, dekFiles)
	case schemas.ModeReencrypt:
		maps, dekResults := transforms.MintDEKs(s, spec, dekFiles)
		files := transforms.ListFiles(s.Scope("Records"), spec.SourceData)
		recResults := transforms.Reencrypt(s, spec, files, maps)
		results = beam.Flatten(s, dekResults, recResults)
	}
	transforms.WriteManifest(s, spec, results)
}

// BuildVerify adds a verify run: spec.TargetData checked against
// spec.TargetDEKs with spec.TargetKEK; the report goes to spec.VerifyReport.
func BuildVerify(s beam.Scope, spec transforms.Spec) {
	s = s.Scope("rekey")
	spec.Mode = "verify"
	results := transforms.Verify(s, spec)
	transforms.WriteManifest(s, spec, results)
}

// BuildGen adds the synthetic dataset generator.
func BuildGen(s beam.Scope, spec transforms.GenSpec) {
	transforms.Generate(s.Scope("rekey"), spec)
}
