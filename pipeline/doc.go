// Package pipeline turns a rekey job (a YAML job file plus flag overrides)
// into the Beam graph that runs it. Build is the one graph both the CLI and
// the tests run; Job.Validate runs before any data is touched; Plan is the
// dry run that checks everything a run needs without writing anything.
//
// Limits: the failure budget and the HSM rate limit are per worker process;
// duplicate dek_ids are refused by the preflight rather than resolved.
package pipeline
