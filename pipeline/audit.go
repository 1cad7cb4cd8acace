package pipeline

import (
	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"rekey/transforms"
)

// BuildAudit adds a KEK audit to the pipeline at s: every DEK of the DEK
// tables and every record of the datasets that still depends on spec.KEK,
// written as a JSON report to spec.Report. It reads data only and opens no
// key, so it can run where the HSM is not reachable, and after the KEK is
// disabled.
func BuildAudit(s beam.Scope, spec transforms.AuditSpec) {
	transforms.Audit(s.Scope("rekey"), spec)
}
