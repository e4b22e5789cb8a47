// Everything mpx offers, one include away. Each header is named like Python's module.
#pragma once

#include <mpx/connection.hpp>     // Address, Connection, Pipe, Listener, Client, wait
#include <mpx/context.hpp>        // StartMethod, set_start_method, get_context
#include <mpx/errors.hpp>         // the exceptions mpx throws
#include <mpx/futures.hpp>        // async_get with Asio tokens, wait, as_completed
#include <mpx/logging.hpp>        // get_logger, log_to_stderr
#include <mpx/managers.hpp>       // Manager, proxies, Server, named task queues
#include <mpx/pickle.hpp>         // py::Object, py::dumps / py::loads: Python objects on the wire
#include <mpx/pool.hpp>           // Pool, AsyncResult
#include <mpx/process.hpp>        // Process, current_process, active_children, cpu_count
#include <mpx/queues.hpp>         // Queue, JoinableQueue, SimpleQueue
#include <mpx/serialize.hpp>      // encode / decode, transferable
#include <mpx/shared_memory.hpp>  // SharedMemory, ShareableList, SharedMemoryManager
#include <mpx/sharedctypes.hpp>   // Value, Array, RawValue, RawArray
#include <mpx/synchronize.hpp>    // Lock, RLock, Semaphore, Condition, Event, Barrier
#include <mpx/timeout.hpp>        // Timeout, forever
