package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"rekey/hsmio/inventory"
	"rekey/providers/storage"
	"rekey/schemas"
	"rekey/transforms/ledger"
)

func init() { commands["keys"] = cmdKeys }

const keysUsage = `Usage: rekey keys plan|copy|export-public [flags]

Moves a token's keys to another HSM, without key material ever in clear:
  rekey keys plan          --from SRC [--to DST] [--json]
      inventory of SRC (secret keys, key pairs, certificates) and what can move:
      transferable (extractable: moved under wrap), re-create (cannot leave:
      make a new key on DST and migrate data with rekey run), public-only
      (signing pairs that cannot leave, public keys, certificates)
  rekey keys copy          --from SRC --to DST --ledger DIR [--run-id ID]
      moves the transferable keys under a transport key made for the run,
      checks each copy with a key check value computed inside both HSMs
  rekey keys export-public --from SRC --out DIR --ledger DIR [--create-successor SUFFIX --to DST]
      writes the public keys of signing key pairs (PEM and JWK) for verifying
      old signatures; --create-successor makes a new pair on DST for each
      signing pair that cannot move, labelled <label>SUFFIX

SRC and DST are token URIs: pkcs11:token=<label>?pin-source=env:VAR (add
;object=<label> to act on one key). Run "rekey keys COMMAND --help" for flags.

Exit codes: 0 ok; 1 fatal error; 2 usage; 3 some keys failed (see the
ledger); 4 the tokens share no transport mechanism (nothing touched).
`

func cmdKeys(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, keysUsage)
		return withCode(exitUsage, errors.New("missing subcommand: plan, copy or export-public"))
	}
	switch args[0] {
	case "plan":
		return keysPlan(args[1:], stdout)
	case "copy":
		return keysCopy(args[1:], stdout)
	case "export-public":
		return keysExportPublic(args[1:], stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, keysUsage)
		return nil
	}
	return withCode(exitUsage, fmt.Errorf("unknown subcommand %q (want plan, copy or export-public; see rekey keys --help)", args[0]))
}

var keysRunIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// openKeyTokens opens --from and, if given, --to.
func openKeyTokens(ctx context.Context, from, to string) (src, dst *inventory.KeyToken, err error) {
	if src, err = inventory.OpenKeyToken(ctx, from); err != nil {
		return nil, nil, withCode(exitFatal, fmt.Errorf("--from: %w", err))
	}
	if to == "" {
		return src, nil, nil
	}
	if dst, err = inventory.OpenKeyToken(ctx, to); err != nil {
		_ = src.Close()
		return nil, nil, withCode(exitFatal, fmt.Errorf("--to: %w", err))
	}
	return src, dst, nil
}

// keysPlanOut is the JSON form of keys plan.
type keysPlanOut struct {
	Source         string               `json:"source"`
	Target         string               `json:"target,omitempty"`
	Transport      string               `json:"transport,omitempty"`
	TransportError string               `json:"transport_error,omitempty"`
	Keys           []inventory.KeyEntry `json:"keys"`
	Totals         map[string]int       `json:"totals"`
}

func keysPlan(args []string, stdout io.Writer) error {
	var from, to, transport string
	var asJSON bool
	defString(&from, "from", "", "source token: pkcs11:token=<label>?pin-source=env:VAR (required)")
	defString(&to, "to", "", "target token: checks that keys can travel to it")
	defString(&transport, "transport", inventory.TransportAuto, "key transport: auto, aes-kwp or rsa-oaep")
	defBool(&asJSON, "json", false, "print JSON instead of a table")
	if _, err := parseFlags("keys plan", "Lists the keys of a token and what keys copy and export-public would do with each.\nTouches nothing. Exit 4 when keys are transferable but the tokens share no transport.", args, stdout); err != nil {
		return err
	}
	if from == "" {
		return withCode(exitUsage, errors.New("--from is required (see rekey keys plan --help)"))
	}
	ctx, cancel := signalContext()
	defer cancel()
	src, dst, err := openKeyTokens(ctx, from, to)
	if err != nil {
		return err
	}
	defer src.Close()
	inv, err := src.Inventory(ctx)
	if err != nil {
		return withCode(exitFatal, err)
	}
	out := keysPlanOut{Source: src.URI(), Keys: inv, Totals: map[string]int{inventory.Transferable: 0, inventory.Recreate: 0, inventory.PublicOnly: 0}}
	for _, e := range inv {
		out.Totals[e.Disposition]++
	}
	var terr error
	if dst != nil {
		defer dst.Close()
		out.Target = dst.URI()
		out.Transport, terr = inventory.PlanTransport(ctx, src, dst, transport)
		if terr != nil {
			out.TransportError = terr.Error()
		}
	}
	if asJSON {
		if err := keysJSON(stdout, out); err != nil {
			return err
		}
	} else {
		printKeysPlan(stdout, &out)
	}
	if terr != nil && out.Totals[inventory.Transferable] > 0 {
		return withCode(exitPreflight, terr)
	}
	return nil
}

func keysJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

func printKeysPlan(w io.Writer, p *keysPlanOut) {
	fmt.Fprintf(w, "rekey keys plan: %s", p.Source)
	if p.Target != "" {
		fmt.Fprintf(w, " -> %s", p.Target)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nLABEL\tID\tKIND\tTYPE\tSIZE\tUSAGE\tEXTRACTABLE\tPLAN")
	for _, e := range p.Keys {
		size := "-"
		if e.Bits > 0 {
			size = fmt.Sprint(e.Bits)
		}
		if e.Curve != "" {
			size = e.Curve
		}
		usage := strings.Join(e.Usage, ",")
		if usage == "" {
			usage = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\t%s\n", e.Label, e.ID, e.Kind, e.Type, size, usage, e.Extractable, e.Disposition)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d transferable, %d re-create, %d public-only\n", p.Totals[inventory.Transferable], p.Totals[inventory.Recreate], p.Totals[inventory.PublicOnly])
	seen := map[string]bool{}
	for _, e := range p.Keys {
		if !seen[e.Disposition+e.Why] {
			seen[e.Disposition+e.Why] = true
			fmt.Fprintf(w, "  %s: %s\n", e.Disposition, e.Why)
		}
	}
	switch {
	case p.Target == "":
		fmt.Fprintln(w, "transport: not checked (give --to)")
	case p.TransportError != "":
		fmt.Fprintln(w, "transport: NONE:", p.TransportError)
	default:
		fmt.Fprintln(w, "transport:", p.Transport)
	}
}

// keysLedgerFlags are the ledger flags of copy and export-public.
type keysLedgerFlags struct{ ledger, runID string }

func (l *keysLedgerFlags) register() {
	defString(&l.ledger, "ledger", "", "ledger folder: rows per key in run_id=<id>/part-keys-*.parquet and a _manifest.json (required)")
	defString(&l.runID, "run-id", "", "run id (default keys-<UTC timestamp>); must be new")
}

// check validates the flags and refuses a run id whose manifest exists:
// key runs never overwrite a ledger.
func (l *keysLedgerFlags) check(ctx context.Context, cmd string) error {
	if l.ledger == "" {
		return withCode(exitUsage, fmt.Errorf("--ledger is required (see rekey keys %s --help)", cmd))
	}
	if l.runID == "" {
		l.runID = "keys-" + time.Now().UTC().Format("20060102T150405Z")
	}
	if !keysRunIDRe.MatchString(l.runID) {
		return withCode(exitUsage, fmt.Errorf("--run-id %q: use letters, digits, '.', '_' and '-' (it becomes a folder name)", l.runID))
	}
	done, err := storage.Exists(ctx, ledger.ManifestPath(l.ledger, l.runID))
	if err != nil {
		return withCode(exitFatal, fmt.Errorf("ledger %s: %w", l.ledger, err))
	}
	if done {
		return withCode(exitUsage, fmt.Errorf("run %s already has a manifest in %s: give a new --run-id", l.runID, l.ledger))
	}
	return nil
}

// keysTotals are the key counts of a keys run's manifest.
type keysTotals struct {
	Keys       int `json:"keys"`
	Migrated   int `json:"migrated"`
	Skipped    int `json:"skipped"`
	Failed     int `json:"failed"`
	Recreate   int `json:"re_create"`
	PublicOnly int `json:"public_only"`
	Exported   int `json:"exported,omitempty"`
	Successors int `json:"successors_created,omitempty"`
}

// keysManifest is the run manifest (schemas.Manifest) with the key counts.
type keysManifest struct {
	schemas.Manifest
	Keys keysTotals `json:"keys"`
}

// commit writes the ledger part and the manifest.
func (l *keysLedgerFlags) commit(ctx context.Context, mode string, rows []schemas.LedgerRow, src, dst string, wrap string, kt keysTotals) error {
	part := ledger.RunDir(l.ledger, l.runID) + "/part-" + mode + ".parquet"
	if err := ledger.WritePart(ctx, part, rows); err != nil {
		return fmt.Errorf("write ledger %s: %w", part, err)
	}
	m := keysManifest{Manifest: schemas.Manifest{Format: schemas.ManifestFormat, RunID: l.runID, Mode: mode, Status: "succeeded",
		Source: schemas.ManifestSide{KEK: src}, Target: schemas.ManifestSide{KEK: dst, Wrap: wrap},
		Finished: time.Now().UTC(), LedgerDir: ledger.RunDir(l.ledger, l.runID)}, Keys: kt}
	for i := range rows {
		m.Totals.Count(&rows[i])
		if rows[i].Status == schemas.StatusFailed && len(m.Failures) < 10 {
			m.Failures = append(m.Failures, schemas.FailureNote{Source: rows[i].Source, Error: rows[i].Error})
		}
	}
	if m.Totals.Failed > 0 {
		m.Status = "completed_with_failures"
	}
	return ledger.WriteJSON(ctx, ledger.ManifestPath(l.ledger, l.runID), m)
}

func keysPut(ctx context.Context, path string, b []byte) error {
	w, err := storage.Create(ctx, path)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		_ = w.Abort()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := w.Commit(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func keysNow() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func keysCopy(args []string, stdout io.Writer) error {
	var from, to, transport string
	var extractable, asJSON bool
	var lf keysLedgerFlags
	defString(&from, "from", "", "source token URI (required)")
	defString(&to, "to", "", "target token URI (required)")
	defString(&transport, "transport", inventory.TransportAuto, "key transport: auto (aes-kwp if both tokens offer it, else rsa-oaep), aes-kwp or rsa-oaep")
	defBool(&extractable, "target-extractable", false, "create the copies extractable (default: sensitive and not extractable)")
	defBool(&asJSON, "json", false, "print JSON instead of a table")
	lf.register()
	if _, err := parseFlags("keys copy", "Copies the transferable keys of --from to --to, wrapped under a transport key generated\non the target for this run and destroyed afterwards. Each copy keeps label, id and usage,\nand is checked with a key check value computed inside both HSMs. Same-label objects on\nthe target are never overwritten: skipped if their check value matches, else reported.", args, stdout); err != nil {
		return err
	}
	if from == "" || to == "" {
		return withCode(exitUsage, errors.New("--from and --to are required (see rekey keys copy --help)"))
	}
	ctx, cancel := signalContext()
	defer cancel()
	if err := lf.check(ctx, "copy"); err != nil {
		return err
	}
	src, dst, err := openKeyTokens(ctx, from, to)
	if err != nil {
		return err
	}
	defer src.Close()
	defer dst.Close()
	rep, err := inventory.Copy(ctx, src, dst, inventory.CopyOptions{Transport: transport, Extractable: extractable})
	if errors.Is(err, inventory.ErrNoTransport) {
		return withCode(exitPreflight, err)
	}
	if err != nil {
		return withCode(exitFatal, err)
	}
	var kt keysTotals
	rows := make([]schemas.LedgerRow, 0, len(rep.Results))
	for _, r := range rep.Results {
		row := schemas.LedgerRow{RunID: lf.runID, Mode: "keys-copy", Unit: schemas.UnitKey, Source: r.Key.URI, Target: r.Target,
			SourceKEK: src.URI(), TargetKEK: dst.URI(), Status: r.Status, Checksum: r.CheckValue, At: keysNow()}
		if r.Status == schemas.StatusMigrated && r.Key.Kind == inventory.KindSecret {
			row.Bytes = int64(r.Key.Bits / 8)
		}
		if r.Err != nil {
			row.Error = r.Err.Error()
		} else {
			row.Error = r.Note
		}
		rows = append(rows, row)
		kt.Keys++
		switch r.Status {
		case schemas.StatusMigrated:
			kt.Migrated++
		case schemas.StatusSkipped:
			kt.Skipped++
		case schemas.StatusFailed:
			kt.Failed++
		}
		switch r.Key.Disposition {
		case inventory.Recreate:
			kt.Recreate++
		case inventory.PublicOnly:
			kt.PublicOnly++
		}
	}
	if err := lf.commit(ctx, "keys-copy", rows, src.URI(), dst.URI(), rep.Transport, kt); err != nil {
		return withCode(exitFatal, err)
	}
	if asJSON {
		type res struct {
			Label      string `json:"label"`
			ID         string `json:"id"`
			Kind       string `json:"kind"`
			Status     string `json:"status"`
			CheckValue string `json:"check_value,omitempty"`
			Target     string `json:"target,omitempty"`
			Note       string `json:"note,omitempty"`
		}
		out := struct {
			RunID     string     `json:"run_id"`
			Transport string     `json:"transport"`
			Totals    keysTotals `json:"totals"`
			Keys      []res      `json:"keys"`
			Warnings  []string   `json:"warnings,omitempty"`
		}{RunID: lf.runID, Transport: rep.Transport, Totals: kt}
		for i, r := range rep.Results {
			out.Keys = append(out.Keys, res{r.Key.Label, r.Key.ID, r.Key.Kind, r.Status, r.CheckValue, r.Target, rows[i].Error})
		}
		for _, e := range rep.Cleanup {
			out.Warnings = append(out.Warnings, e.Error())
		}
		if err := keysJSON(stdout, out); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "rekey keys copy: %s -> %s, run %s\n", src.URI(), dst.URI(), lf.runID)
		if rep.Transport != "" {
			fmt.Fprintf(stdout, "transport: %s (destroyed)\n", rep.Transport)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nLABEL\tKIND\tSTATUS\tCHECK VALUE\tNOTE")
		for i, r := range rep.Results {
			cv := r.CheckValue
			if cv == "" {
				cv = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Key.Label, r.Key.Kind, r.Status, cv, rows[i].Error)
		}
		tw.Flush()
		fmt.Fprintf(stdout, "\n%d keys: %d migrated, %d skipped (%d re-create, %d public-only, %d already there), %d failed\n",
			kt.Keys, kt.Migrated, kt.Skipped, kt.Recreate, kt.PublicOnly, kt.Skipped-kt.Recreate-kt.PublicOnly, kt.Failed)
		fmt.Fprintf(stdout, "ledger: %s\n", ledger.RunDir(lf.ledger, lf.runID))
		for _, e := range rep.Cleanup {
			fmt.Fprintln(stdout, "warning:", e)
		}
	}
	if kt.Failed > 0 {
		return withCode(exitFailures, fmt.Errorf("%d of %d keys failed (see the NOTE column, or: rekey ledger --ledger %s --run-id %s --status failed)", kt.Failed, kt.Keys, lf.ledger, lf.runID))
	}
	return nil
}

// keysExportEntry is one entry of index.json in the export folder.
type keysExportEntry struct {
	Label       string               `json:"label"`
	ID          string               `json:"id"`
	Kind        string               `json:"kind"`
	Algorithm   string               `json:"algorithm,omitempty"`
	Fingerprint string               `json:"fingerprint,omitempty"`
	KeyID       string               `json:"kid,omitempty"`
	PEM         string               `json:"pem,omitempty"`
	JWK         string               `json:"jwk,omitempty"`
	Source      string               `json:"source"`
	Successor   *inventory.Successor `json:"successor,omitempty"`
	Error       string               `json:"error,omitempty"`
}

var keysUnsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// keysFileBase is a file name for a key: its label made safe, or its id.
func keysFileBase(label, id string, used map[string]bool) string {
	base := keysUnsafeName.ReplaceAllString(label, "_")
	if base == "" || strings.Trim(base, ".") == "" {
		base = "id-" + id
	}
	if used[base] {
		base += "-" + id
	}
	for n := 2; used[base]; n++ {
		base = fmt.Sprintf("%s-%d", strings.TrimSuffix(base, fmt.Sprintf("-%d", n-1)), n)
	}
	used[base] = true
	return base
}

func keysExportPublic(args []string, stdout io.Writer) error {
	var from, to, out, suffix string
	var asJSON bool
	var lf keysLedgerFlags
	defString(&from, "from", "", "source token URI (required)")
	defString(&out, "out", "", "folder (or object-store location) for the PEM and JWK files and index.json (required)")
	defString(&suffix, "create-successor", "", "label suffix: make a new key pair of the same type on --to for each signing pair that cannot move, labelled <label><suffix>")
	defString(&to, "to", "", "target token URI (with --create-successor)")
	defBool(&asJSON, "json", false, "print index.json to stdout instead of a table")
	lf.register()
	if _, err := parseFlags("keys export-public", "Writes the public key of every signing key pair (and every lone public key and\ncertificate) of --from as <label>.pub.pem and <label>.jwk.json, each labelled with the\nkey's label, id, algorithm and SHA-256 fingerprint, plus index.json.", args, stdout); err != nil {
		return err
	}
	if from == "" || out == "" {
		return withCode(exitUsage, errors.New("--from and --out are required (see rekey keys export-public --help)"))
	}
	if suffix != "" && to == "" {
		return withCode(exitUsage, errors.New("--create-successor needs --to: the token that gets the new key pairs"))
	}
	if suffix == "" && to != "" {
		return withCode(exitUsage, errors.New("--to is only used with --create-successor SUFFIX"))
	}
	if suffix != "" && keysUnsafeName.MatchString(suffix) {
		return withCode(exitUsage, fmt.Errorf("--create-successor %q: use letters, digits, '.', '_' and '-'", suffix))
	}
	ctx, cancel := signalContext()
	defer cancel()
	if err := lf.check(ctx, "export-public"); err != nil {
		return err
	}
	src, dst, err := openKeyTokens(ctx, from, to)
	if err != nil {
		return err
	}
	defer src.Close()
	targetRef := ""
	if dst != nil {
		defer dst.Close()
		targetRef = dst.URI()
	}
	inv, err := src.Inventory(ctx)
	if err != nil {
		return withCode(exitFatal, err)
	}
	var index []keysExportEntry
	var rows []schemas.LedgerRow
	var kt keysTotals
	used := map[string]bool{}
	for _, x := range src.ExportPublic(ctx, inv) {
		e := x.Key
		ix := keysExportEntry{Label: e.Label, ID: e.ID, Kind: e.Kind, Algorithm: x.Algorithm, Fingerprint: x.Fingerprint, KeyID: x.KeyID, Source: e.URI}
		row := schemas.LedgerRow{RunID: lf.runID, Mode: "keys-export-public", Unit: schemas.UnitKey, Source: e.URI,
			SourceKEK: src.URI(), Status: schemas.StatusMigrated, Checksum: x.Fingerprint, At: keysNow()}
		err := x.Err
		if err == nil {
			base := keysFileBase(e.Label, e.ID, used)
			ext := ".pub.pem"
			if e.Kind == inventory.KindCertificate {
				ext = ".crt.pem"
			}
			ix.PEM, ix.JWK = base+ext, base+".jwk.json"
			row.Target = storage.Join(out, ix.PEM)
			if err = keysPut(ctx, storage.Join(out, ix.PEM), x.PEM); err == nil {
				err = keysPut(ctx, storage.Join(out, ix.JWK), x.JWK)
			}
		}
		if err == nil && suffix != "" && e.Disposition == inventory.PublicOnly && (e.Kind == inventory.KindKeyPair || e.Kind == inventory.KindPrivate) {
			s, serr := inventory.CreateSuccessor(ctx, e, dst, suffix)
			if serr != nil {
				err = serr
			} else {
				ix.Successor = &s
				row.TargetKEK = s.URI
				if s.Created {
					kt.Successors++
				}
			}
		}
		kt.Keys++
		if err != nil {
			ix.Error, row.Status, row.Error = err.Error(), schemas.StatusFailed, err.Error()
			kt.Failed++
		} else {
			kt.Exported++
			kt.Migrated++
		}
		index = append(index, ix)
		rows = append(rows, row)
	}
	if index == nil {
		index = []keysExportEntry{}
	}
	b, err := json.MarshalIndent(index, "", "  ")
	if err != nil {
		return err
	}
	if err := keysPut(ctx, storage.Join(out, "index.json"), append(b, '\n')); err != nil {
		return withCode(exitFatal, err)
	}
	if err := lf.commit(ctx, "keys-export-public", rows, src.URI(), targetRef, "", kt); err != nil {
		return withCode(exitFatal, err)
	}
	if asJSON {
		if _, err := stdout.Write(append(b, '\n')); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "rekey keys export-public: %s -> %s, run %s\n", src.URI(), out, lf.runID)
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nLABEL\tALGORITHM\tFINGERPRINT\tFILES\tSUCCESSOR")
		for _, ix := range index {
			files, succ := ix.PEM+", "+ix.JWK, "-"
			if ix.Error != "" {
				files = "FAILED: " + ix.Error
			}
			if ix.Successor != nil {
				succ = ix.Successor.Label
				if !ix.Successor.Created {
					succ += " (existed)"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ix.Label, ix.Algorithm, ix.Fingerprint, files, succ)
		}
		tw.Flush()
		fmt.Fprintf(stdout, "\n%d exported, %d failed, %d successors created; index: %s\n", kt.Exported, kt.Failed, kt.Successors, storage.Join(out, "index.json"))
	}
	if kt.Failed > 0 {
		return withCode(exitFailures, fmt.Errorf("%d of %d public keys failed (see FILES above or the ledger)", kt.Failed, kt.Keys))
	}
	return nil
}
