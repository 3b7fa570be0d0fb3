"""Data fixtures: synthetic EmoSet trees and the official label map."""
