package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// This file holds the subcommands: keys, backup, export, import and version. They work on
// the database directly, with or without a server running; a running server notices their
// changes within its -reload-interval.

const backupUsage = "usage: liveops backup [-db FILE] OUT.db\n\nCopies the database, consistently, while a server may be using it.\n\nflags:\n"

// runBackup writes a consistent copy of the database to a new file.
func runBackup(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, db := commandFlags("backup", backupUsage, getenv, stderr)
	if err := parseCommand(fs, args, 1, stdout); err != nil {
		return err
	}
	st, err := openExistingStore(ctx, *db)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := st.Backup(ctx, fs.Arg(0)); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "backed up %s to %s\n", *db, fs.Arg(0))
	return nil
}

const exportUsage = "usage: liveops export [-db FILE] > EVENTS.json\n\nPrints every event's definition as JSON, sorted by id.\n\nflags:\n"

// runExport writes every event's definition to stdout as stable JSON sorted by id.
func runExport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, db := commandFlags("export", exportUsage, getenv, stderr)
	if err := parseCommand(fs, args, 0, stdout); err != nil {
		return err
	}
	st, err := openExistingStore(ctx, *db)
	if err != nil {
		return err
	}
	defer st.Close()
	events, _, err := st.Events(ctx)
	if err != nil {
		return err
	}
	slices.SortFunc(events, func(a, b Event) int { return strings.Compare(a.ID, b.ID) })
	f := exportFile{Events: make([]eventDoc, len(events))}
	for i, e := range events {
		f.Events[i] = toDoc(e, false)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, marshalJSON(f), "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = stdout.Write(buf.Bytes())
	return err
}

// exportFile is the shape of an export: every event's definition, sorted by id.
type exportFile struct {
	Events []eventDoc `json:"events"`
}

const importUsage = `usage: liveops import [-db FILE] [-dry-run] EVENTS.json

Creates or updates events by id from a file in the form export writes, all or nothing.
Every problem of every event is reported, and then nothing is imported.

flags:
`

// importActor is who imported events are recorded as written by.
const importActor = "import"

// runImport creates or updates events from an export file, all or nothing.
func runImport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, db := commandFlags("import", importUsage, getenv, stderr)
	dryRun := fs.Bool("dry-run", false, "print what would change, field by field, and change nothing")
	if err := parseCommand(fs, args, 1, stdout); err != nil {
		return err
	}
	data, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	events, problems := parseImport(data)
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, p)
		}
		return fmt.Errorf("import: %d problem(s) in %s; nothing was imported", len(problems), fs.Arg(0))
	}
	var changes []importChange
	if !databaseExists(*db) && *dryRun {
		// A dry run against a database that does not exist yet creates everything, and
		// must not leave an empty database behind.
		for _, e := range events {
			changes = append(changes, importChange{ID: e.ID, Action: "create"})
		}
	} else {
		if !databaseExists(*db) {
			fmt.Fprintf(stderr, "note: %s did not exist; created a new database there\n", *db)
		}
		st, err := openStore(ctx, *db, time.Now)
		if err != nil {
			return err
		}
		defer st.Close()
		if changes, _, err = st.Import(withActor(ctx, importActor), events, *dryRun); err != nil {
			return err
		}
	}
	counts := map[string]int{}
	for _, c := range changes {
		counts[c.Action]++
		fmt.Fprintf(stdout, "%-9s %s\n", c.Action, c.ID)
		for _, f := range c.Fields {
			fmt.Fprintf(stdout, "          %s\n", f)
		}
	}
	verb := "imported"
	if *dryRun {
		verb = "would import (dry run, nothing changed)"
	}
	fmt.Fprintf(stdout, "%s: %d created, %d updated, %d unchanged\n", verb, counts["create"], counts["update"], counts["unchanged"])
	return nil
}

// importProblem is one thing wrong with an import file.
type importProblem struct {
	EventID string // the event's id, or #N (its place in the file) when the id is unusable
	Field   string
	Reason  string
}

func (p importProblem) String() string {
	if p.EventID == "" {
		return p.Field + ": " + p.Reason
	}
	return fmt.Sprintf("event %s: %s: %s", p.EventID, p.Field, p.Reason)
}

// parseImport reads and checks an import file. It reports every problem of every event,
// in the words the API uses, not just the first.
func parseImport(data []byte) ([]Event, []importProblem) {
	var f struct {
		Events []json.RawMessage `json:"events"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, []importProblem{{Field: "file", Reason: "must be an export file, {\"events\": [...]}: " + jsonErrorAt(string(data), err)}}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, []importProblem{{Field: "file", Reason: "holds more than one JSON value"}}
	}
	var problems []importProblem
	var events []Event
	seen := map[string]bool{}
	for i, raw := range f.Events {
		e, errs := parseImportedEvent(raw)
		id := e.ID
		switch {
		case !validID(id):
			id = fmt.Sprintf("#%d", i+1)
		case seen[id]:
			errs = append(errs, &fieldError{"id", "appears more than once in the file"})
		}
		seen[e.ID] = true
		for _, fe := range errs {
			problems = append(problems, importProblem{id, fe.Field, fe.Reason})
		}
		if len(errs) == 0 {
			events = append(events, e)
		}
	}
	return events, problems
}

// parseImportedEvent reads one event of an import file field by field, so that a field of
// the wrong type or an unreadable time is reported with its name, and then validates it.
func parseImportedEvent(raw json.RawMessage) (Event, fieldErrors) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return Event{}, fieldErrors{{"event", "must be a JSON object"}}
	}
	var e Event
	var errs fieldErrors
	str := func(name string, dst *string) {
		if v, ok := fields[name]; ok && json.Unmarshal(v, dst) != nil {
			errs.add(&fieldError{name, "must be a string"})
		}
	}
	num := func(name string, dst any) {
		if v, ok := fields[name]; ok && json.Unmarshal(v, dst) != nil {
			errs.add(&fieldError{name, "must be a whole number"})
		}
	}
	tm := func(name string, v json.RawMessage, dst *time.Time) {
		var s string
		if json.Unmarshal(v, &s) != nil {
			errs.add(&fieldError{name, "must be an RFC 3339 time string such as 2027-01-01T20:00:00Z"})
			return
		}
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			errs.add(&fieldError{name, fmt.Sprintf("must be an RFC 3339 time such as 2027-01-01T20:00:00Z, got %q", s)})
			return
		}
		*dst = t.UTC()
	}
	for name, v := range fields {
		switch name {
		case "id", "title", "description", "state", "priority":
		case "start_time":
			tm(name, v, &e.Start)
		case "end_time":
			tm(name, v, &e.End)
		case "preview_time":
			tm(name, v, &e.Preview)
		case "labels":
			if json.Unmarshal(v, &e.Labels) != nil {
				errs.add(&fieldError{name, "must be an array of strings"})
			}
		case "rewards":
			e.Rewards = string(v) // validate says what is wrong with it
		case "recurrence":
			var r map[string]json.RawMessage
			if json.Unmarshal(v, &r) != nil {
				errs.add(&fieldError{name, "must be an object"})
				continue
			}
			for rn, rv := range r {
				field := "recurrence." + rn
				switch rn {
				case "interval":
					if json.Unmarshal(rv, &e.Recurrence.Interval) != nil {
						errs.add(&fieldError{field, "must be a whole number"})
					}
				case "count":
					if json.Unmarshal(rv, &e.Recurrence.Count) != nil {
						errs.add(&fieldError{field, "must be a whole number"})
					}
				case "unit":
					if json.Unmarshal(rv, &e.Recurrence.Unit) != nil {
						errs.add(&fieldError{field, "must be a string"})
					}
				case "time_zone":
					if json.Unmarshal(rv, &e.Recurrence.TimeZone) != nil {
						errs.add(&fieldError{field, "must be a string"})
					}
				case "until":
					tm(field, rv, &e.Recurrence.Until)
				default:
					errs.add(&fieldError{field, "is not a recurrence field"})
				}
			}
		case "audience":
			e.Audience = parseImportedAudience(name, v, &errs)
		case "localizations":
			e.Localizations = parseImportedLocalizations(v, &errs)
		case "rollout_percent", "time_mode":
		case "created_at", "updated_at", "version":
			errs.add(&fieldError{name, "is set by the server; leave it out"})
		default:
			errs.add(&fieldError{name, "is not an event field"})
		}
	}
	str("id", &e.ID)
	str("title", &e.Title)
	str("description", &e.Description)
	str("state", &e.State)
	num("priority", &e.Priority)
	num("rollout_percent", &e.RolloutPercent)
	str("time_mode", &e.TimeMode)
	if !validID(e.ID) {
		errs.add(&fieldError{"id", "must be a lowercase UUID such as 0b7d3c3e-4f1a-4a53-9c5e-2f9a8d6b1e20"})
	}
	if len(e.Labels) == 0 {
		e.Labels = nil
	}
	// Validation reports what the fields say; a field already reported as unreadable would
	// only be reported again as missing.
	for _, fe := range fieldProblems(e.validate()) {
		if !slices.ContainsFunc(errs, func(p *fieldError) bool { return p.Field == fe.Field }) {
			errs = append(errs, fe)
		}
	}
	slices.SortStableFunc(errs, func(a, b *fieldError) int { return strings.Compare(a.Field, b.Field) })
	return e, errs
}

// parseImportedAudience reads an audience (or its exclude, by the field name prefix) field
// by field, so that a field of the wrong type is reported as audience.platforms, say.
func parseImportedAudience(prefix string, v json.RawMessage, errs *fieldErrors) *Audience {
	var fields map[string]json.RawMessage
	if json.Unmarshal(v, &fields) != nil {
		errs.add(&fieldError{prefix, "must be an object"})
		return nil
	}
	a := &Audience{}
	list := func(name string, v json.RawMessage, dst *[]string) {
		if json.Unmarshal(v, dst) != nil {
			errs.add(&fieldError{prefix + "." + name, "must be an array of strings"})
		}
	}
	version := func(name string, v json.RawMessage, dst *string) {
		if json.Unmarshal(v, dst) != nil {
			errs.add(&fieldError{prefix + "." + name, "must be a string"})
		}
	}
	for name, v := range fields {
		switch name {
		case "platforms":
			list(name, v, &a.Platforms)
		case "countries":
			list(name, v, &a.Countries)
		case "languages":
			list(name, v, &a.Languages)
		case "min_version":
			version(name, v, &a.MinVersion)
		case "max_version":
			version(name, v, &a.MaxVersion)
		case "exclude":
			a.Exclude = parseImportedAudience(prefix+".exclude", v, errs)
		default:
			errs.add(&fieldError{prefix + "." + name, "is not an audience field"})
		}
	}
	return a
}

// parseImportedLocalizations reads an event's localizations, a JSON object of locale tag
// to {"title", "description"}.
func parseImportedLocalizations(v json.RawMessage, errs *fieldErrors) map[string]Localization {
	var byTag map[string]json.RawMessage
	if json.Unmarshal(v, &byTag) != nil {
		errs.add(&fieldError{"localizations", `must be an object such as {"fr": {"title": "...", "description": "..."}}`})
		return nil
	}
	out := make(map[string]Localization, len(byTag))
	for tag, lv := range byTag {
		field := "localizations[" + strconv.Quote(tag) + "]"
		var d localizationDoc
		dec := json.NewDecoder(bytes.NewReader(lv))
		dec.DisallowUnknownFields()
		if dec.Decode(&d) != nil {
			errs.add(&fieldError{field, "must be an object with a string title and description, and nothing else"})
			continue
		}
		out[tag] = Localization(d)
	}
	return out
}

const keysUsage = `usage:
  liveops keys create -role http_user|grpc_admin|metrics [-name NAME] [-expires 30d] [-db FILE]
  liveops keys list [-db FILE]
  liveops keys revoke [-db FILE] ID

create prints the new key alone on stdout, and what it made on stderr. The key is shown
this once: only its SHA-256 is stored.
`

// runKeys runs the `liveops keys` subcommands.
func runKeys(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return errors.New("keys: missing subcommand: create, list or revoke")
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, keysUsage)
		return flag.ErrHelp
	}
	fs, db := commandFlags("keys "+cmd, keysUsage+"\nflags:\n", getenv, stderr)

	switch cmd {
	case "create":
		r := fs.String("role", "", "the key's role: http_user (HTTP reads), grpc_admin (gRPC admin) or metrics (GET /metrics)")
		name := fs.String("name", "", "a note saying who or what the key is for")
		var expires time.Duration
		fs.Var(daysDuration{&expires}, "expires", "lifetime, such as 30d or 12h; 0 means the key never expires")
		if err := parseCommand(fs, args, 0, stdout); err != nil {
			return err
		}
		if expires < 0 {
			return errors.New("keys create: -expires must not be negative")
		}
		if _, ok := roleTags[role(*r)]; !ok {
			return fmt.Errorf("keys create: -role must be http_user, grpc_admin or metrics, got %q", *r)
		}
		if !databaseExists(*db) {
			// Making the database here is how a new install gets its first keys; a typo in
			// -db must not pass unnoticed, though.
			fmt.Fprintf(stderr, "note: %s did not exist; created a new, empty database there\n", *db)
		}
		st, err := openStore(ctx, *db, time.Now)
		if err != nil {
			return err
		}
		defer st.Close()
		secret, k, err := createKey(ctx, st, role(*r), *name, expires)
		if err != nil {
			return fmt.Errorf("keys create: %w", err)
		}
		fmt.Fprintf(stderr, "created %s key %s\n", k.Role, k.ID)
		fmt.Fprintln(stdout, secret)
		return nil

	case "list":
		if err := parseCommand(fs, args, 0, stdout); err != nil {
			return err
		}
		st, err := openExistingStore(ctx, *db)
		if err != nil {
			return err
		}
		defer st.Close()
		keys, err := st.Keys(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tROLE\tNAME\tCREATED\tLAST USED\tEXPIRES\tREVOKED")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Role, orDash(k.Name),
				timeOrDash(k.CreatedAt), timeOrDash(k.LastUsedAt), timeOrDash(k.ExpiresAt), timeOrDash(k.RevokedAt))
		}
		return tw.Flush()

	case "revoke":
		if err := parseCommand(fs, args, 1, stdout); err != nil {
			return err
		}
		st, err := openExistingStore(ctx, *db)
		if err != nil {
			return err
		}
		defer st.Close()
		if err := st.RevokeKey(ctx, fs.Arg(0)); err != nil {
			return fmt.Errorf("keys revoke: %w", err)
		}
		fmt.Fprintf(stderr, "revoked key %s\n", fs.Arg(0))
		return nil
	}
	fmt.Fprint(stderr, keysUsage)
	return fmt.Errorf("keys: unknown subcommand %q: want create, list or revoke", cmd)
}

// databaseExists reports whether the SQLite file db names exists. A PostgreSQL database is
// the server's to create: a URL always counts as existing, and its schema is made on open.
func databaseExists(db string) bool {
	if isPostgres(db) {
		return true
	}
	_, err := os.Stat(db)
	return err == nil
}

// runVersion prints the module version and the commit the binary was built from.
func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", "usage: liveops version\n\nPrints the version and the commit this binary was built from.\n", stderr)
	if err := parseCommand(fs, args, 0, stdout); err != nil {
		return err
	}
	version, commit, dirty := "(devel)", "unknown", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if dirty {
		commit += " (with uncommitted changes)"
	}
	fmt.Fprintf(stdout, "liveops %s, commit %s\n", version, commit)
	return nil
}

// commandFlags returns the flag set of a subcommand, with its usage text and the -db flag
// every subcommand shares.
func commandFlags(name, usage string, getenv func(string) string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := newFlagSet(name, usage, stderr)
	db := new(string)
	dbFlag(fs, db, getenv)
	return fs, db
}

// parseCommand parses a subcommand's flags, which may come before or after its positional
// arguments, and checks there are exactly want of those.
func parseCommand(fs *flag.FlagSet, args []string, want int, stdout io.Writer) error {
	var pos []string
	for {
		if err := parseFlags(fs, args, stdout); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != want {
		fs.Usage()
		return fmt.Errorf("%s: want %d argument(s), got %d", fs.Name(), want, len(pos))
	}
	// Leave the positional arguments where fs.Arg finds them.
	return fs.Parse(append([]string{"--"}, pos...))
}

// createKey makes a key of role r, stores its hash and returns the key text, which exists
// nowhere else from then on.
func createKey(ctx context.Context, st *store, r role, name string, ttl time.Duration) (string, apiKey, error) {
	secret, k, err := newKey(r, name, st.now().UTC(), ttl)
	if err != nil {
		return "", apiKey{}, err
	}
	if err := st.CreateKey(ctx, k); err != nil {
		return "", apiKey{}, err
	}
	return secret, k, nil
}

// bootstrapKeys creates one key of each role when the database has no keys at all, so that
// a fresh `go run .` can be used straight away, and writes them once: to the file named
// (created, mode 0600, refusing to overwrite) or to stdout, apart from the log on stderr,
// so that a collector of the log alone never receives them. A container runtime collects
// stdout too: there, -bootstrap-keys-file keeps them out of its logs.
func bootstrapKeys(ctx context.Context, st *store, file string, stdout io.Writer) error {
	has, err := st.HasKeys(ctx)
	if err != nil || has {
		return err
	}
	w := stdout
	if file != "" {
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("bootstrap keys: %w", err)
		}
		defer f.Close()
		w = f
	}
	user, _, err := createKey(ctx, st, roleHTTPUser, "bootstrap", 0)
	if err != nil {
		return err
	}
	admin, _, err := createKey(ctx, st, roleGRPCAdmin, "bootstrap", 0)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "# No API keys existed, so liveops created these two. They are shown only this once: store them now.\n"+
		"LIVEOPS_USER_KEY=%s\nLIVEOPS_ADMIN_KEY=%s\n", user, admin)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
