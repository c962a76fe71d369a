package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"
)

// backupUsage is printed for a malformed `liveops backup`.
const backupUsage = `usage: liveops backup [-db FILE] OUT.db
`

// runBackup writes a consistent copy of the database to a new file while a server may be
// running against it.
func runBackup(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	fs, db := commandFlags("liveops backup", backupUsage, getenv, stderr)
	if err := parseInterspersed(fs, args, 1); err != nil {
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

// runExport writes every event's definition to stdout as stable JSON sorted by id.
func runExport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, db := commandFlags("liveops export", "usage: liveops export [-db FILE] > EVENTS.json\n", getenv, stderr)
	if err := parseInterspersed(fs, args, 0); err != nil {
		return err
	}
	st, err := openExistingStore(ctx, *db)
	if err != nil {
		return err
	}
	defer st.Close()
	out, err := st.Export(ctx)
	if err != nil {
		return err
	}
	_, err = stdout.Write(out)
	return err
}

// runImport creates or updates events from an export file, all or nothing.
func runImport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs, db := commandFlags("liveops import", "usage: liveops import [-db FILE] [-dry-run] EVENTS.json\n", getenv, stderr)
	dryRun := fs.Bool("dry-run", false, "print what would change, field by field, and change nothing")
	if err := parseInterspersed(fs, args, 1); err != nil {
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
	if _, err := os.Stat(*db); err != nil && *dryRun {
		// A dry run against a database that does not exist yet creates everything, and
		// must not leave an empty database behind.
		for _, e := range events {
			changes = append(changes, importChange{ID: e.ID, Action: "create"})
		}
	} else {
		st, err := openStore(ctx, *db)
		if err != nil {
			return err
		}
		defer st.Close()
		if changes, _, err = st.Import(ctx, events, time.Now().UTC(), *dryRun); err != nil {
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

const keysUsage = `usage:
  liveops keys create -role http_user|grpc_admin [-name NAME] [-expires DURATION] [-db FILE]
  liveops keys list [-db FILE]
  liveops keys revoke [-db FILE] ID
`

// runKeys runs the `liveops keys` subcommands against the database directly, so they work
// whether or not a server is running; a running server notices the change within its
// -reload-interval.
func runKeys(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return errors.New("keys: missing subcommand")
	}
	cmd, args := args[0], args[1:]
	fs, db := commandFlags("liveops keys "+cmd, keysUsage, getenv, stderr)

	switch cmd {
	case "create":
		r := fs.String("role", "", "the key's role: http_user (HTTP reads) or grpc_admin (gRPC admin)")
		name := fs.String("name", "", "a note saying who or what the key is for")
		expires := fs.Duration("expires", 0, "lifetime, e.g. 720h; 0 means the key never expires")
		if err := parseInterspersed(fs, args, 0); err != nil {
			return err
		}
		if *expires < 0 {
			return errors.New("keys create: -expires must not be negative")
		}
		if _, ok := roleTags[role(*r)]; !ok {
			return fmt.Errorf("keys create: -role must be http_user or grpc_admin, got %q", *r)
		}
		st, err := openStore(ctx, *db)
		if err != nil {
			return err
		}
		defer st.Close()
		secret, k, err := createKey(ctx, st, role(*r), *name, *expires)
		if err != nil {
			return fmt.Errorf("keys create: %w", err)
		}
		fmt.Fprintf(stderr, "created %s key %s\n", k.Role, k.ID)
		fmt.Fprintln(stdout, secret)
		return nil

	case "list":
		if err := parseInterspersed(fs, args, 0); err != nil {
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
		if err := parseInterspersed(fs, args, 1); err != nil {
			return err
		}
		id := fs.Arg(0)
		st, err := openExistingStore(ctx, *db)
		if err != nil {
			return err
		}
		defer st.Close()
		if err := st.RevokeKey(ctx, id, time.Now()); errors.Is(err, errNotFound) {
			return fmt.Errorf("keys revoke: no key with id %q (see liveops keys list)", id)
		} else if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "revoked key %s\n", id)
		return nil
	}
	fmt.Fprint(stderr, keysUsage)
	return fmt.Errorf("keys: unknown subcommand %q", cmd)
}

// commandFlags returns the flag set of a subcommand, with its usage text and the -db flag
// every subcommand shares.
func commandFlags(name, usage string, getenv func(string) string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	db := new(string)
	dbFlag(fs, db, getenv)
	return fs, db
}

// openExistingStore opens a database that must already exist, so that a mistyped -db
// is an error rather than a new, empty database, and whose schema must be this binary's:
// these commands never migrate, so running a newer binary's `export` against production
// cannot stop the server from starting.
func openExistingStore(ctx context.Context, path string) (*store, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	return openStoreAs(ctx, path, false)
}

// parseInterspersed parses flags that may come before or after the positional arguments,
// and checks there are exactly want of those.
func parseInterspersed(fs *flag.FlagSet, args []string, want int) error {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
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
	secret, k, err := newKey(r, name, time.Now().UTC(), ttl)
	if err != nil {
		return "", apiKey{}, err
	}
	if err := st.CreateKey(ctx, k); err != nil {
		return "", apiKey{}, err
	}
	return secret, k, nil
}

// bootstrapKeys creates one key of each role when the database has no keys at all, and
// prints them to w once, so a fresh `go run .` can be used straight away.
func bootstrapKeys(ctx context.Context, st *store, w io.Writer) error {
	has, err := st.HasKeys(ctx)
	if err != nil || has {
		return err
	}
	user, _, err := createKey(ctx, st, roleHTTPUser, "bootstrap", 0)
	if err != nil {
		return err
	}
	admin, _, err := createKey(ctx, st, roleGRPCAdmin, "bootstrap", 0)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "No API keys existed, so two were created. They will not be shown again; store them now.\n"+
		"  http_user  (HTTP reads): %s\n  grpc_admin (gRPC admin): %s\n", user, admin)
	return nil
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
