package main

// The Beam runners built into rekey besides direct and prism (imported in
// commands.go). Each registers its --runner name when imported:
//
//	universal (also "portable", "PortableRunner"): any portable job service,
//	          --endpoint=HOST:PORT (Flink and Spark job servers, prism)
//	flink, spark: the universal runner under their own names
//	dataflow: Google Cloud Dataflow (--project, --region, --staging_location,
//	          --sdk_container_image, ...)
//
// A remote runner starts workers from a worker binary that must be built
// with cgo to load a PKCS#11 module: see jobs/worker/README.md and
// --worker_binary. With --environment_type=LOOPBACK the workers run inside
// this process instead (tests, single machine).
import (
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/options/jobopts"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/runners/dataflow"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/runners/flink"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/runners/spark"
	_ "github.com/apache/beam/sdks/v2/go/pkg/beam/runners/universal"

	"rekey/pipeline"
	"rekey/providers/storage"
)

// remoteWorkers reports whether this run's DoFns execute in processes other
// than this one: then locations must mean the same thing everywhere, and
// this process's progress counters stay at zero.
func remoteWorkers() bool {
	return !isLocalRunner() && !jobopts.IsLoopback()
}

// checkSharedLocations refuses relative local paths when workers run
// elsewhere: each worker would resolve them in its own working directory.
func checkSharedLocations(j *pipeline.Job) error {
	locs := map[string]string{"source.data": j.Source.Data, "source.deks": j.Source.DEKs, "target.data": j.Target.Data,
		"target.deks": j.Target.DEKs, "ledger": j.Ledger}
	names := make([]string, 0, len(locs))
	for n := range locs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		loc := locs[n]
		if loc == "" || storage.Scheme(loc) != "" || filepath.IsAbs(loc) {
			continue
		}
		return fmt.Errorf("%s: %q is a relative path, and the workers of runner %s run elsewhere: use s3://, oss://, or an absolute path on a filesystem every worker and this machine mount at the same place", n, loc, *runners.Runner)
	}
	return nil
}

// printRunnerMetrics prints the rekey/* Beam counters of a finished job, as
// the runner reports them (the figures of every worker).
func printRunnerMetrics(w io.Writer, res beam.PipelineResult) {
	if res == nil {
		return
	}
	got := map[string]int64{}
	for _, c := range res.Metrics().AllMetrics().Counters() {
		if c.Key.Namespace == "rekey" {
			got[c.Key.Name] += c.Result()
		}
	}
	if len(got) == 0 {
		fmt.Fprintln(w, "  the runner reported no rekey counters")
		return
	}
	var parts []string
	for _, n := range []string{"files", "deks", "records", "bytes", "failed"} {
		parts = append(parts, fmt.Sprintf("%s %d", n, got[n]))
	}
	fmt.Fprintf(w, "  runner counters (rekey/*): %s\n", strings.Join(parts, ", "))
}
