// Everything mpx offers, one include away. Each header is named like Python's module.
#pragma once

#include <mpx/errors.hpp>        // the exceptions mpx throws
#include <mpx/timeout.hpp>       // Timeout, forever
#include <mpx/serialize.hpp>     // encode / decode, transferable
#include <mpx/connection.hpp>    // Address, Connection, Pipe, Listener, Client, wait
#include <mpx/process.hpp>       // Process, current_process, active_children, cpu_count
#include <mpx/synchronize.hpp>   // Lock, RLock, Semaphore, Condition, Event, Barrier
#include <mpx/sharedctypes.hpp>  // Value, Array
#include <mpx/queues.hpp>        // Queue, JoinableQueue, SimpleQueue
#include <mpx/pool.hpp>          // Pool, AsyncResult
#include <mpx/managers.hpp>      // Manager, proxies, Server, named task queues
