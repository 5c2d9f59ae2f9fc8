// Command memctl is the operator's CLI for memworker: device status, the
// memory operations, live pressure, and raw requests, over NATS.
//
// Exit codes: 0 success; 1 the worker answered with an error; 2 bad usage;
// 3 NATS unreachable, no worker for the device, or a timeout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kong"
	"github.com/nats-io/nats.go"
	"github.com/willabides/kongplete"
	"golang.org/x/term"

	"github.com/memworker/memworker/client"
	"github.com/memworker/memworker/subjects"
	"github.com/memworker/memworker/worker"
)

// Exit codes.
const (
	exitOK          = 0
	exitWorkerError = 1
	exitUsage       = 2
	exitUnreachable = 3
)

type cli struct {
	Version  kong.VersionFlag `name:"version" help:"Print the version and exit."`
	Server   string           `name:"server" short:"s" env:"NATS_URL" default:"nats://127.0.0.1:4222" help:"NATS server URL(s)."`
	Device   string           `name:"device" short:"d" env:"MEMCTL_DEVICE" help:"Device id (default: the only device of the fleet)."`
	JSON     bool             `name:"json" help:"Print JSON instead of tables."`
	Timeout  time.Duration    `name:"timeout" default:"10s" help:"Request timeout."`
	CacheDir string           `name:"cache-dir" env:"MEMCTL_CACHE_DIR" help:"Where memctl remembers which device holds the allocations it made or found (default: the user's cache folder)."`
	client.Flags

	Status      statusCmd      `cmd:"" help:"Device status: usage, pool, pressure."`
	Alloc       allocCmd       `cmd:"" help:"Allocate memory (sizes such as 512MiB, 2GiB)."`
	Free        freeCmd        `cmd:"" help:"Free allocations by id."`
	Renew       renewCmd       `cmd:"" help:"Extend leases (allocations made with --ttl)."`
	Resize      resizeCmd      `cmd:"" help:"Change a RESERVATION's size."`
	Run         runCmd         `cmd:"" help:"Run a command under a reservation: wait for room, renew while it lives, relay release and restore to it, free on exit (memctl run --size 40GiB -- CMD ...)."`
	Allocations allocationsCmd `cmd:"" help:"List allocations."`
	Clear       clearCmd       `cmd:"" help:"Free non-persistent allocations and release cached memory."`
	Defrag      defragCmd      `cmd:"" help:"Compact the device's pool."`
	Optimize    optimizeCmd    `cmd:"" help:"Run optimization strategies."`
	Recs        recsCmd        `cmd:"" help:"Optimization recommendations; --apply N sends the Nth."`
	Models      modelsCmd      `cmd:"" help:"Memory per model."`
	Offload     offloadCmd     `cmd:"" help:"Move the least recently used models to pinned host memory (model_optimize), each whole."`
	Restore     restoreCmd     `cmd:"" help:"Bring offloaded models back to the device (model_optimize restore)."`
	Transfer    transferCmd    `cmd:"" help:"Copy or move an allocation to another device or host memory."`
	Watch       watchCmd       `cmd:"" help:"Live pressure events (--allocations: expiries and handoffs)."`
	Top         topCmd         `cmd:"" help:"A live view of the devices: who holds their memory, waiters, pressure, the last events (q to quit)."`
	Req         reqCmd         `cmd:"" help:"Send a raw request and print the reply."`

	InstallCompletions kongplete.InstallCompletions `cmd:"" help:"Install shell completions for memctl (bash, zsh, fish)."`
}

// env is what every command runs with.
type env struct {
	ctx    context.Context
	cli    *cli
	nc     *nats.Conn
	client *client.Client
	out    io.Writer
	tty    bool
	in     io.Reader // a terminal to ask on; nil when there is none
	stderr io.Writer // prompts, so --json output stays clean
	ids    *idCache  // which device holds which allocation, a hint
}

// streams are the command's standard files.
type streams struct {
	in       io.Reader // nil when stdin is not a terminal: nobody to ask
	out, err io.Writer
	tty      bool // out is a terminal: tables, bars
}

// exitError carries an exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func usageErr(format string, args ...any) error {
	return &exitError{exitUsage, fmt.Errorf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	std := streams{out: os.Stdout, err: os.Stderr, tty: isTerminal(os.Stdout)}
	if isTerminal(os.Stdin) {
		std.in = os.Stdin
	}
	code := run(ctx, os.Args[1:], std)
	stop()
	os.Exit(code)
}

// run parses args, runs the command and returns the exit code.
func run(ctx context.Context, args []string, std streams) int {
	stdout, stderr := std.out, std.err
	var c cli
	exit := -1
	parser, err := kong.New(&c, kong.Name("memctl"),
		kong.Description("Operate memworker GPU memory services over NATS."),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { exit = code }),
		kong.Vars{"version": "memctl " + worker.BuildVersion()},
		// --priority -5: a negative number is a flag's value.
		kong.WithHyphenPrefixedParameters(true),
		kong.UsageOnError())
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	// A shell asking for completions (COMP_LINE set) gets them and nothing
	// else runs.
	kongplete.Complete(parser, kongplete.WithExitFunc(func(code int) { exit = code }))
	if exit >= 0 {
		return exit
	}
	kctx, err := parser.Parse(args)
	if exit >= 0 { // --help
		return exit
	}
	if err != nil {
		fmt.Fprintln(stderr, "memctl:", err)
		return exitUsage
	}
	if kctx.Command() == "install-completions" { // needs no NATS
		if err := kctx.Run(); err != nil {
			fmt.Fprintln(stderr, "memctl:", err)
			return exitWorkerError
		}
		return exitOK
	}
	opts, err := c.Flags.Options()
	if err != nil {
		fmt.Fprintln(stderr, "memctl:", err)
		return exitUsage
	}
	opts = append(opts, nats.Name("memctl"), nats.Timeout(c.Timeout))
	opts = append(opts, client.Resilient(func(e client.ConnectionEvent) {
		if e.Lost {
			fmt.Fprintf(stderr, "memctl: NATS connection lost (%v); reconnecting\n", e.Err)
			return
		}
		fmt.Fprintf(stderr, "memctl: NATS connection back (%s)\n", e.URL)
	})...)
	nc, err := nats.Connect(c.Server, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "memctl: cannot reach NATS at %s: %v\n", c.Server, err)
		return exitUnreachable
	}
	defer nc.Close()
	cl := client.New(nc)
	cl.Timeout = c.Timeout
	e := &env{ctx: ctx, cli: &c, nc: nc, client: cl, out: stdout, tty: std.tty && !c.JSON, in: std.in, stderr: stderr}
	e.ids = loadIDCache(c.CacheDir)
	defer e.ids.save()
	if err := kctx.Run(e); err != nil {
		fmt.Fprintln(stderr, "memctl:", describe(err, e))
		return codeOf(err)
	}
	return exitOK
}

// codeOf maps an error to an exit code.
func codeOf(err error) int {
	var ee *exitError
	var we *subjects.Error
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &we):
		return exitWorkerError
	default:
		return exitUnreachable
	}
}

// describe makes NATS errors say what they mean here.
func describe(err error, e *env) string {
	switch {
	case errors.Is(err, client.ErrNoWorker):
		if e.cli.Device != "" {
			// Name the devices there are: the id was likely mistyped.
			e.cli.Device = ""
			if replies, ferr := e.perDevice(subjects.GetUsage, nil); ferr == nil {
				return fmt.Sprintf("%v; the fleet's devices are %s", err, strings.Join(slices.Sorted(maps.Keys(replies)), ", "))
			}
		}
		return err.Error() + " (is a worker running, and is the device id right?)"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fmt.Sprintf("no answer within %v: %v", e.cli.Timeout, err)
	}
	return err.Error()
}

// device returns --device, or the fleet's only device.
func (e *env) device() (string, error) {
	if e.cli.Device != "" {
		return e.cli.Device, nil
	}
	res, err := e.client.Fleet(e.ctx, subjects.GetUsage, nil, 300*time.Millisecond)
	if err != nil {
		return "", err
	}
	var ids []string
	for _, n := range res.Nodes {
		for _, d := range n.Devices {
			ids = append(ids, d.DeviceID)
		}
	}
	switch len(ids) {
	case 0:
		return "", &exitError{exitUnreachable, errors.New("no worker answered: no device to talk to")}
	case 1:
		return ids[0], nil
	}
	return "", usageErr("the fleet has %d devices %v: pick one with --device", len(ids), ids)
}

// do sends op to the device and decodes the reply's data into out.
func (e *env) do(op subjects.Op, data, out any) error {
	dev, err := e.device()
	if err != nil {
		return err
	}
	_, err = e.client.Do(e.ctx, op, dev, data, out)
	return err
}

// print writes v as indented JSON.
func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isTerminal reports whether f is a terminal (not merely a character
// device: /dev/null is one too, and nobody answers a prompt there).
func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }
