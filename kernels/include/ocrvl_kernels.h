/* Umbrella header: the only file bindgen reads. One include per kernel family. */
#pragma once
#include "common.h"
#include "elementwise.h"
#include "norm.h"
#include "embedding.h"
#include "rope.h"
#include "kv_cache.h"
#include "decode.h"
#include "attention.h"
#include "sampling.h"
#include "moe.h"
