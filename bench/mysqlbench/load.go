package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
)

const (
	modePrepared = "prepared"
	modeText     = "text"

	pointQuery = "SELECT name FROM items WHERE id = ?"
)

// loadSpec is one measured run: clients workers, each on its own
// connection, for warmup (unrecorded) and then duration.
type loadSpec struct {
	clients  int
	warmup   time.Duration
	duration time.Duration
	// cpu, when set, reads Sigil's CPU time; it is sampled at the end of
	// the warm-up and of the run.
	cpu func() time.Duration
}

// loadResult is what one run measured.
type loadResult struct {
	// rate is operations per second over the recorded window.
	rate float64
	// meanMs is the mean operation latency in milliseconds.
	meanMs float64
	// latencies are the recorded operations' times in microseconds, sorted.
	latencies []int64
	// sigilCPU is Sigil's CPU time over the recorded window (spec.cpu).
	sigilCPU time.Duration
}

// op is one timed operation of a worker.
type op func(ctx context.Context) error

// worker prepares one client (its connection, statement...) and returns
// its operation and what to release afterwards.
type worker func(ctx context.Context, id int) (op, func(), error)

// runLoad sets all workers up, then runs their operations back to back
// until warmup+duration has passed, recording the latency of every
// operation started after the warm-up. The first error stops the run.
func runLoad(ctx context.Context, s loadSpec, newWorker worker) (loadResult, error) {
	ops := make([]op, s.clients)
	for i := range ops {
		o, release, err := newWorker(ctx, i)
		if err != nil {
			return loadResult{}, fmt.Errorf("client %d: %w", i, err)
		}
		defer release()
		ops[i] = o
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now()
	recordFrom := start.Add(s.warmup)
	end := recordFrom.Add(s.duration)
	lat := make([][]int64, s.clients)
	cpuFrom := make(chan time.Duration, 1)
	if s.cpu != nil {
		t := time.AfterFunc(s.warmup, func() { cpuFrom <- s.cpu() })
		defer t.Stop()
	}
	var wg sync.WaitGroup
	for i, o := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Sized for ~20k ops/s per client, so appends rarely
			// reallocate inside the window.
			rec := make([]int64, 0, 1<<16)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				if err := o(ctx); err != nil {
					cancel(fmt.Errorf("client %d: %w", i, err))
					break
				}
				if !t0.Before(recordFrom) {
					rec = append(rec, time.Since(t0).Microseconds())
				}
			}
			lat[i] = rec
		}()
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return loadResult{}, err
	}
	var sigilCPU time.Duration
	if s.cpu != nil {
		sigilCPU = s.cpu() - <-cpuFrom
	}
	var all []int64
	var sum int64
	for _, l := range lat {
		all = append(all, l...)
		for _, us := range l {
			sum += us
		}
	}
	if len(all) == 0 {
		return loadResult{}, errors.New("no operation completed in the measured window")
	}
	slices.Sort(all)
	return loadResult{
		rate:      float64(len(all)) / s.duration.Seconds(),
		meanMs:    float64(sum) / float64(len(all)) / 1000,
		latencies: all,
		sigilCPU:  sigilCPU,
	}, nil
}

// queryWorker runs the point query on its own connection of db, as a
// server-side prepared statement (COM_STMT_EXECUTE, the driver's
// interpolateParams=false) or as plain text (COM_QUERY), with random ids
// in 1..rows.
func queryWorker(db *sql.DB, mode string, rows int) worker {
	return func(ctx context.Context, id int) (op, func(), error) {
		conn, err := db.Conn(ctx)
		if err != nil {
			return nil, nil, err
		}
		rng := rand.New(rand.NewPCG(uint64(id), 42))
		var name string
		check := func(err error) error {
			if err != nil {
				return err
			}
			if name == "" {
				return errors.New("empty name")
			}
			return nil
		}
		switch mode {
		case modePrepared:
			stmt, err := conn.PrepareContext(ctx, pointQuery)
			if err != nil {
				_ = conn.Close()
				return nil, nil, err
			}
			return func(ctx context.Context) error {
					return check(stmt.QueryRowContext(ctx, rng.IntN(rows)+1).Scan(&name))
				}, func() {
					_ = stmt.Close()
					_ = conn.Close()
				}, nil
		case modeText:
			return func(ctx context.Context) error {
				// An int literal: no quoting concerns, and no args
				// keeps the driver on the text protocol.
				q := "SELECT name FROM items WHERE id = " + strconv.Itoa(rng.IntN(rows)+1)
				return check(conn.QueryRowContext(ctx, q).Scan(&name))
			}, func() { _ = conn.Close() }, nil
		}
		_ = conn.Close()
		return nil, nil, fmt.Errorf("unknown mode %q (want %s or %s)", mode, modePrepared, modeText)
	}
}

// connectWorker opens a connection, pings it and closes it per
// operation, straight on the driver so that database/sql's pool adds
// nothing.
func connectWorker(connector driver.Connector) worker {
	return func(context.Context, int) (op, func(), error) {
		return func(ctx context.Context) error {
			c, err := connector.Connect(ctx)
			if err != nil {
				return err
			}
			pinger, ok := c.(driver.Pinger)
			if !ok {
				_ = c.Close()
				return errors.New("driver connection has no Ping")
			}
			if err := pinger.Ping(ctx); err != nil {
				_ = c.Close()
				return err
			}
			return c.Close()
		}, func() {}, nil
	}
}

// openDB is a pool for cfg sized for clients held connections.
func openDB(cfg *mysql.Config, clients int) (*sql.DB, driver.Connector, error) {
	connector, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, nil, err
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(clients)
	db.SetMaxIdleConns(clients)
	return db, connector, nil
}
