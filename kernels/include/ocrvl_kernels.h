/* Umbrella header: the only file bindgen reads. One include per kernel family. */
#pragma once
#include "common.h"
#include "elementwise.h"
